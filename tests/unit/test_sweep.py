"""sweep: the in-process checks (nothing trained, no process started). The rest, and what the file tests and why:
tests/integration/test_sweep.py."""

import pytest

from resnet_lite.sweep.__main__ import main
from resnet_lite.sweep.plan import REPORT_PRESETS


def test_help_names_the_presets_and_the_files(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "model0 model1" in out and "results.md" in out and "--gpus" in out and "--resume" in out
    assert REPORT_PRESETS == [f"model{i}" for i in range(9)]  # the default study is Table 1, whatever else is shipped
