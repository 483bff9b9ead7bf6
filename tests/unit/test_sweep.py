"""sweep: a real two-preset study with tiny settings, stopped mid-run, resumed two runs at a time, then skipped;
the tables and the figure it leaves; one-line errors before anything starts."""

import pytest

from resnet_lite.sweep.__main__ import main
from resnet_lite.sweep.plan import REPORT_PRESETS

TINY = ["--epochs", "2", "--data", "synthetic", "--batch-size", "32", "--wandb", "disabled", "data.synthetic_train=256",
        "data.synthetic_test=64", "data.image_size=8", "eval_batch_size=64", "checkpoint_every_steps=4"]
PRESETS = ["model5", "model8"]


def test_help_names_the_presets_and_the_files(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "model0 model1" in out and "results.md" in out and "--gpus" in out and "--resume" in out
    assert REPORT_PRESETS == [f"model{i}" for i in range(9)]  # the default study is Table 1, whatever else is shipped
