"""The training configuration: the training runs and real processes. The rest, and what the file tests and why:
tests/unit/test_config.py."""
import os
import re
import subprocess
import sys

import pytest
import yaml

from resnet_lite.config import (
    load_yaml,
    resolve_config,
    to_dict,
)
from resnet_lite.train import main as train_main

from support.settings import default_text, settings


def test_presets_load_from_the_installed_package(tmp_path):
    """From a folder that is not the repository: the YAML files must come with the package."""
    code = ("from resnet_lite.config import list_presets, resolve_config; "
            "print(' '.join(list_presets())); print(resolve_config('model5').model)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    names, model = out.splitlines()
    names = names.split()
    assert [n for n in names if n.startswith("model")] == [f"model{i}" for i in range(9)]
    assert {"fast", "fast94"} <= set(names) and model == "lite_r4b2"


def test_print_config_with_resume_shows_the_runs_config_changed_by_the_command_line(tiny_run, capsys):
    saved = load_yaml((tiny_run / "config.yaml").read_text())
    checkpoints = sorted(p.name for p in (tiny_run / "checkpoints").iterdir())
    assert train_main(["--print-config", "--resume", str(tiny_run), "--epochs", "5", "optim.weight_decay=0.1"]) == 0
    printed = load_yaml(capsys.readouterr().out)
    assert saved["output_dir"] is None  # config.yaml does not point back at its run; the printed config says where
    saved["epochs"], saved["optim"]["weight_decay"], saved["output_dir"] = 5, 0.1, str(tiny_run)
    assert printed == saved and printed["data"]["spec"] == "synthetic" and printed["tta"] == 1
    assert sorted(p.name for p in (tiny_run / "checkpoints").iterdir()) == checkpoints  # nothing trained or written


# ---------------------------------------------------------------------------------------------- settings as flags


def _printed_config(argv, capsys) -> dict:
    assert train_main([*argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("argv", [
    ["optim.lr=0.03", "data.image_size=16", "ema.enabled=true", "optim.weight_decay=5e-4"],
    ["--optim.lr=0.03", "--data.image_size=16", "--ema.enabled=true", "--optim.weight_decay=5e-4"],
    ["--optim.lr", "0.03", "--data.image_size", "16", "--ema.enabled", "--optim.weight-decay", "5e-4"],  # tyro's
    ["--ema.enabled", "True", "--data", "cifar10", "--optim.lr", "3e-2", "data.image_size=16", "--optim.weight_decay",
     "0.0005"],
], ids=["overrides", "flags=value", "flags value", "mixed"])
def test_settings_as_flags_mean_what_overrides_mean(argv, capsys):
    cfg = _printed_config(argv, capsys)
    assert (cfg["optim"]["lr"], cfg["data"]["image_size"], cfg["ema"]["enabled"]) == (0.03, 16, True)
    assert cfg["optim"]["weight_decay"] == 5e-4 and cfg["data"]["spec"] == "cifar10"


def test_a_boolean_flag_alone_is_true_and_takes_only_true_or_false(capsys):
    """--ema.enabled alone is true (jsonargparse's reading); the override after it stays an override, a flag stays a
    flag, and an explicit false is read."""
    cfg = _printed_config(["--ema.enabled", "optim.lr=0.02", "--compile", "--epochs", "3"], capsys)
    assert cfg["ema"]["enabled"] is True and cfg["compile"] is True
    assert cfg["optim"]["lr"] == 0.02 and cfg["epochs"] == 3
    cfg = _printed_config(["--ema.enabled", "false", "--save_best=False"], capsys)  # False: how wandb agent writes it
    assert cfg["ema"]["enabled"] is False and cfg["save_best"] is False


def test_wandb_agents_arguments_are_read_as_overrides(capsys):
    """The command-line forms wandb's agent builds from a run's values (its own create_sweep_command_args): ${args}
    (--k=v), ${args_no_equals} (--k v) and ${args_no_hyphens} (k=v) all give the same settings."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    values = {"optim.lr": 0.0031, "optim.weight_decay": 1e-05, "label_smoothing": 0.1, "ema.enabled": True,
              "augment.preset": "fast", "batch_size": 64, "schedule.warmup_epochs": 0.5}
    forms = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    configs = [_printed_config(forms[form], capsys) for form in ("args", "args_no_equals", "args_no_hyphens")]
    for config in configs:  # --print-config fills in where a new run would go: runs/<name>-<time>
        assert config.pop("output_dir").startswith("runs/lite_r4b2-")
    assert configs[0] == configs[1] == configs[2]
    expected = to_dict(resolve_config(overrides=[f"{k}={v}" for k, v in values.items()]))
    assert expected.pop("output_dir") is None and configs[0] == expected
    assert configs[0]["optim"]["weight_decay"] == 1e-5 and configs[0]["batch_size"] == 64


def test_help_lists_every_setting_with_its_type_and_default():
    usage = subprocess.run([sys.executable, "-m", "resnet_lite.train", "--help"], capture_output=True, text=True,
                           check=True, env=dict(os.environ, COLUMNS="80")).stdout
    for path, f in settings():
        line = re.search(rf"^  {re.escape(path)} +(\S.*?) = (\S+): \S", usage, re.M)
        if path == "optim.betas":  # a list has spaces: [0.9, 0.999]
            line = re.search(rf"^  {re.escape(path)} +(\S.*?) = (\[.*?\]): \S", usage, re.M)
        assert line, f"{path} is not listed in --help"
        assert line[2] == default_text(path), path
        if "choices" in f.metadata:
            assert line[1] == "|".join(f.metadata["choices"])
    assert re.search(r"^  optim.lr +float = 0.01: peak learning rate", usage, re.M)
    assert re.search(r"^  data.image_size +int \| null = null: ", usage, re.M)
    assert "schedule.*" in usage and "--print-config" in usage


def test_help_stays_one_list_and_says_how_to_write_flags():
    usage = subprocess.run([sys.executable, "-m", "resnet_lite.train", "--help"], capture_output=True, text=True,
                           check=True, env=dict(os.environ, COLUMNS="80")).stdout
    assert "--KEY=VALUE or --KEY VALUE" in " ".join(usage.split())
    assert usage.count("\n  optim.lr ") == 1 and "--optim.lr" not in usage  # no second list of dotted flags
