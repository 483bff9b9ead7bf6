"""--profile N: the in-process checks (nothing trained, no process started). The rest, and what the file tests and
why: tests/integration/test_profile.py."""

import pytest

from resnet_lite.train import main


def test_profile_is_a_setting_and_must_not_be_negative(capsys):
    assert main(["profile=4", "--print-config"]) == 0 and "profile: 4" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--profile", "-1", "--print-config"])
    assert capsys.readouterr().err.startswith("error: profile=-1 must be >= 0")
