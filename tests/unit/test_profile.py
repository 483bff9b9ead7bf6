"""--profile N: a torch.profiler trace of N training steps after the warm-up, per process, read back as Chrome's trace
format and as the operator table; the run with it ends with the weights of the run without it."""
import sys
from pathlib import Path

import pytest

from resnet_lite.train import main

BIN = Path(sys.executable).parent
TINY = ["--data", "synthetic", "--batch-size", "32", "--epochs", "3", "--wandb", "disabled", "data.synthetic_train=128",
        "data.synthetic_test=64", "data.image_size=8", "eval_batch_size=64"]  # 4 steps an epoch, 12 in all


def test_profile_is_a_setting_and_must_not_be_negative(capsys):
    assert main(["profile=4", "--print-config"]) == 0 and "profile: 4" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--profile", "-1", "--print-config"])
    assert capsys.readouterr().err.startswith("error: profile=-1 must be >= 0")
