"""W&B and the console, read back from the real thing: the in-process checks (nothing trained, no process started).
The rest, and what the file tests and why: tests/integration/test_wandb.py."""

import pytest

from resnet_lite.config import resolve_config
from resnet_lite.outputs.tracking import WandbConfig, wandb_settings

STEPS_PER_EPOCH, EPOCHS, EVERY, LR = 4, 2, 3, 0.005


def test_wandb_names_follow_settings_then_environment(monkeypatch, tmp_path):
    for key in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_NAME", "WANDB_RUN_GROUP", "WANDB_TAGS", "WANDB_NOTES"):
        monkeypatch.delenv(key, raising=False)
    run_dir = tmp_path / "m5-try"
    assert wandb_settings(WandbConfig(), run_dir) == {"project": "resnet_lite", "entity": None, "name": "m5-try",
                                                      "group": None, "tags": None, "notes": None}
    monkeypatch.setenv("WANDB_PROJECT", "p-env")
    monkeypatch.setenv("WANDB_TAGS", "a,b")
    monkeypatch.setenv("WANDB_RUN_GROUP", "g-env")
    names = wandb_settings(WandbConfig(project="p", tags=" x , y,"), run_dir)
    assert names["project"] == "p" and names["tags"] == ["x", "y"] and names["group"] == "g-env"


@pytest.mark.parametrize("old, mode, project", [
    ({"wandb": "offline"}, "offline", None),
    ({"wandb": "disabled", "wandb_project": "legacy"}, "disabled", "legacy"),
    ({"wandb_project": "legacy"}, "auto", "legacy"),
])
def test_older_wandb_settings_still_read(old, mode, project, tmp_path):
    """Configs, checkpoints and run directories written before wandb.* was a group of settings."""
    import yaml

    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    for cfg in (resolve_config(file=tmp_path / "old.yaml"), resolve_config(base=old),
                resolve_config(overrides=[f"{k}={v}" for k, v in old.items()])):
        assert (cfg.wandb.mode, cfg.wandb.project) == (mode, project)
