"""A run started by `wandb agent` for a W&B sweep (launch/wandb_sweep.yaml): what the agent's environment says, and
what such a run does differently.

    agent = agent_run()            # None outside an agent
    agent.run_dir                  # runs/sweep-<sweep id>/<run id>: the run directory when no --output-dir is given
    agent.check(cfg)               # a UserError when a swept value is not the run's setting (a command without ${args})
    agent.wandb_kwargs(kwargs)     # wandb.init's arguments without those a sweep ignores

The agent starts the sweep's command with WANDB_SWEEP_ID, WANDB_RUN_ID and WANDB_SWEEP_PARAM_PATH (a YAML file of the
run's values) in the environment. wandb.init then opens the agent's run whatever project, entity or id it is given
(it warns and ignores them), so the trainer gives none and keeps the agent's id: the agent's run is the trainer's W&B
run. W&B requeues a run that exits non-zero after wandb.mark_preempting(), and an agent starts it again with the same
run id and values; keying the run directory by that id lets the sweep's `--resume` continue it from its checkpoint.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

__all__ = ["AgentRun", "agent_run"]


@dataclass
class AgentRun:
    sweep_id: str
    run_id: str
    values: dict = field(default_factory=dict)  # the run's swept values, {"optim.lr": 0.01, ...}

    @property
    def run_dir(self) -> Path:
        return Path("runs") / f"sweep-{self.sweep_id}" / self.run_id

    def check(self, cfg) -> None:
        """A UserError when the resolved config `cfg` does not hold a value the sweep gave this run: the sweep's
        command must pass them (${args}), and each must be a setting."""
        from ..config import resolve_config, to_dict

        given = to_dict(cfg)
        swept = to_dict(resolve_config(base=given, overrides=[f"{k}={v}" for k, v in self.values.items()]))
        if differ := [k for k in self.values if _get(swept, k) != _get(given, k)]:
            given_here = ", ".join(f"{k}={self.values[k]}" for k in differ)
            raise UserError(f"the W&B sweep gives this run {given_here}, but its "
                            f"command line did not: end the sweep's command with ${{args}} (launch/wandb_sweep.yaml)")

    def wandb_kwargs(self, kwargs: dict, named: bool) -> dict:
        """wandb.init's arguments for the agent's run: no project, entity or id (a sweep ignores them, with a
        warning), and no name unless one was `named` (W&B names a sweep's runs itself)."""
        dropped = {"project", "entity", "id"} | (set() if named else {"name"})
        return {k: v for k, v in kwargs.items() if k not in dropped}


def _get(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def agent_run() -> AgentRun | None:
    """The agent's run this process belongs to, from its environment; None outside a sweep."""
    sweep_id, run_id = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
    if not sweep_id or not run_id:
        return None
    values = {}
    path = os.environ.get("WANDB_SWEEP_PARAM_PATH")
    if path and os.path.isfile(path):
        from ..config import load_yaml

        loaded = load_yaml(Path(path).read_text()) or {}
        values = {k: v["value"] for k, v in loaded.items() if isinstance(v, dict) and "value" in v}
    return AgentRun(sweep_id, run_id, values)
