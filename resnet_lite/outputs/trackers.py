"""The experiment trackers a run logs to (the setting log_with): W&B and the others Accelerate speaks, through its own
tracker classes.

    python -m resnet_lite.train --log-with tensorboard,wandb        # then: tensorboard --logdir runs/
    trackers = build_trackers(("tensorboard", "wandb"), run_dir, wandb_kwargs={...}, resumed_at=0)

Every tracker gets the same scalar rows (accelerator.log): train/loss and train/lr every wandb.log_every_steps steps,
and each epoch's metrics.jsonl row at the epoch's last step. W&B gets the resolved settings as they nest; the others
get them flattened to scalars (optim.lr, ...), which is all TensorBoard's hparams and MLflow's params take. W&B keeps
its extras (best values in the summary, the final media, model artifacts, the console log).

Where each writes: TensorBoard into <run>/tensorboard (a resumed run writes on there, TensorBoard hiding the rows
after the checkpoint that the resumed run logs again), Aim into the run directory's .aim, DVCLive into <run>/dvclive;
MLflow where MLFLOW_TRACKING_URI says (experiment resnet_lite, or $MLFLOW_EXPERIMENT_NAME; the run named after the
run directory), Comet and ClearML as their own configuration says.
"""
from pathlib import Path

from ..errors import UserError, did_you_mean
from . import rundir

__all__ = ["TRACKERS", "PROJECT", "check_log_with", "require_installed", "build_trackers", "flat_config"]

# Accelerate's names (its LoggerType); the pip package each needs
TRACKERS = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow", "aim": "aim", "comet_ml": "comet_ml",
            "clearml": "clearml", "dvclive": "dvclive"}
PROJECT = "resnet_lite"  # the project (MLflow's experiment, Comet's and ClearML's project) of the trackers besides W&B


def check_log_with(names) -> tuple[str, ...]:
    """The tracker names, each known, without repeats; a UserError naming the closest known one."""
    out = []
    for name in names:
        if name not in TRACKERS:
            hint = did_you_mean(name, TRACKERS)
            raise UserError(f"log_with: '{name}' is not a tracker; {hint + ' ' if hint else ''}"
                            f"(choose from {', '.join(TRACKERS)})")
        if name not in out:
            out.append(name)
    return tuple(out)


def require_installed(names) -> None:
    """A UserError naming the install command for every tracker in `names` whose package is missing."""
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    if missing := [n for n in names if n not in available]:
        packages = " ".join(TRACKERS[n] for n in missing)
        raise UserError(f"log_with names {', '.join(missing)}, not installed here; pip install {packages} (or drop "
                        f"{'them' if len(missing) > 1 else 'it'} from --log-with)")


def build_trackers(names, run_dir: Path, *, wandb_kwargs: dict | None = None, project: str = PROJECT,
                   resumed_at: int = 0) -> list:
    """Accelerate's tracker objects, not started (Accelerator.init_trackers starts them). wandb_kwargs: wandb.init's
    arguments, its project as `project` (None in a sweep: the agent's); resumed_at: the step a resumed run continues
    from (0: a new run)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    run_dir = Path(run_dir)

    def wandb_tracker(cls):
        assert wandb_kwargs is not None, "wandb among the trackers needs wandb_kwargs"  # the Reporter gives both
        return cls(wandb_kwargs.get("project"), **{k: v for k, v in wandb_kwargs.items() if k != "project"})

    made = {
        "wandb": wandb_tracker,
        # SummaryWriter's purge_step: the rows after the step this process starts from, which it logs again, are
        # hidden (those an earlier process logged after its checkpoint; for a new run any earlier run's there)
        "tensorboard": lambda cls: cls(rundir.TENSORBOARD, run_dir, purge_step=resumed_at + 1),
        "aim": lambda cls: cls(run_dir.name, run_dir),
        "mlflow": lambda cls: cls(experiment_name=project, run_name=run_dir.name),
        "dvclive": lambda cls: cls(dir=str(run_dir / rundir.DVCLIVE)),
    }
    return [made.get(name, lambda cls: cls(project))(LOGGER_TYPE_TO_CLASS[name]) for name in names]


def flat_config(config: dict, prefix: str = "") -> dict:
    """A nested config as one level of scalars: {"optim": {"lr": 0.01}} -> {"optim.lr": 0.01}; lists as text."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = str(value) if isinstance(value, (list, tuple)) else value
    return out
