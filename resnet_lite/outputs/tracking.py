"""What people watching a run see: the console and Weights & Biases (the run directory's files:
resnet_lite.outputs.files, its figures: resnet_lite.outputs.plots).

Everything here runs on the main process only (the trainer passes enabled=False elsewhere), except StepLog, which
every process calls so that its rows are all processes' mean. On a terminal the console is a rich progress bar per
epoch (images/s, loss, lr, the epoch's and the whole run's ETA, "evaluating" while it evaluates) and a table row per
epoch; when stdout is a file or a pipe it is plain lines a log file can follow: progress every PLAIN_EVERY seconds and
one line per epoch. W&B: WandbConfig, the run's names (wandb_settings), its summary metrics, per-step rows
(StepLog), the final media and the model artifacts.
"""
import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import UserError
from ..training.distributed import DeferredReduce

__all__ = ["WandbConfig", "WANDB_MODES", "StepLog", "wandb_mode", "wandb_settings", "define_wandb_metrics",
           "log_wandb_final", "log_wandb_model"]

WANDB_MODES = ("auto", "online", "offline", "disabled")
# the W&B settings left null take these environment variables (wandb's own), then the default after them
WANDB_ENV = {"project": ("WANDB_PROJECT", "resnet_lite"), "entity": ("WANDB_ENTITY", None),
             "name": ("WANDB_NAME", None), "group": ("WANDB_RUN_GROUP", None), "tags": ("WANDB_TAGS", None),
             "notes": ("WANDB_NOTES", None)}


@dataclass
class WandbConfig:
    mode: str = field(default="auto", metadata={
        "choices": WANDB_MODES, "help": "auto follows $WANDB_MODE when set, else is online when logged in to W&B and "
                                        "disabled otherwise (--wandb MODE sets it)"})
    project: str | None = field(default=None, metadata={"help": "null -> $WANDB_PROJECT, else resnet_lite"})
    entity: str | None = field(default=None, metadata={"help": "team or user; null -> $WANDB_ENTITY, else yours"})
    name: str | None = field(default=None, metadata={
        "help": "the run's name; null -> $WANDB_NAME, else the run directory's"})
    group: str | None = field(default=None, metadata={
        "help": "runs shown together; null -> $WANDB_RUN_GROUP (a sweep sets its output folder's name)"})
    tags: str | None = field(default=None, metadata={
        "help": "comma-separated, e.g. cifar10,baseline; null -> $WANDB_TAGS"})
    notes: str | None = field(default=None, metadata={"help": "a description of the run; null -> $WANDB_NOTES"})
    log_every_steps: int = field(default=50, metadata={
        "help": "optimizer steps between history rows of the train loss (mean since the previous row over every "
                "process's batches) and lr, for every tracker of log_with; read when the next is due, so the host "
                "never waits for them; 0 = per epoch only"})
    log_model: bool = field(default=False, metadata={
        "help": "upload model_best and model_last (with config.yaml) as versions of the artifact model-<run id>, "
                "aliases best and last"})

    def __post_init__(self):
        if self.log_every_steps < 0:
            raise UserError(f"wandb.log_every_steps={self.log_every_steps} must be >= 0 (0 = per epoch only)")

def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        # no host in the URL: only the file's default entry can answer, as it does for ""
        return netrc.netrc().authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(setting) -> tuple[str, str | None]:
    """(online | offline | disabled, a one-line hint or None). 'auto' follows WANDB_MODE when set, else it is online
    when the user is logged in (WANDB_API_KEY or a netrc entry) and disabled otherwise. setting: a WandbConfig or
    its mode."""
    setting = getattr(setting, "mode", setting)
    if setting != "auto":
        return setting, None
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline", "disabled"):
        return env, None
    if env == "dryrun":
        return "offline", None
    if _logged_in():
        return "online", None
    return "disabled", "W&B off: not logged in (`wandb login` to turn it on, or --wandb offline to log locally)"


def wandb_settings(cfg: WandbConfig, run_dir: Path) -> dict:
    """project, entity, name, group, tags (a list), notes: each setting, else its environment variable (WANDB_ENV),
    else its default (the name: the run directory's)."""
    out = {}
    for key, (env, default) in WANDB_ENV.items():
        out[key] = getattr(cfg, key) or os.environ.get(env) or (run_dir.name if key == "name" else default)
    out["tags"] = [t.strip() for t in out["tags"].split(",") if t.strip()] if out["tags"] else None
    return out


def define_wandb_metrics(run, has_val: bool) -> None:
    """Best values in the run's summary (test_acc.max, test_loss.min, ...) beside the last ones."""
    for split in ("test", "val") if has_val else ("test",):
        run.define_metric(f"{split}_acc", summary="max,last")
        run.define_metric(f"{split}_loss", summary="min,last")
    run.define_metric("train_loss", summary="min,last")
    run.define_metric("train/loss", summary="min,last")


class StepLog:
    """The train loss (mean over the steps since the previous row or the epoch's start, over every process's batches)
    and the lr every `every` optimizer steps, to `log(values, step=)`. Called on every process: with `world_size` > 1
    each row's sums are all-reduced, without waiting; the row is read from the device when the next one is due (or at
    flush(), an epoch's end), long after it was computed, so the host never waits for the device on its account."""

    def __init__(self, log, every: int, world_size: int = 1):
        self.log, self.every, self.world_size = log, every, world_size
        self.pending: tuple[int, float, DeferredReduce] | None = None  # (step, lr, the row's [loss sum, images])
        self.mark: tuple[Any, int] | None = None  # (loss_sum, images) at the previous row, on the device

    def __call__(self, step: int, loss_sum, seen: int, lr: float) -> None:
        if not self.every or step % self.every:
            return
        self.flush()
        import torch

        if self.mark is None:  # the epoch's first row: from its start (its running sums start again each epoch)
            self.mark = (loss_sum.new_zeros(()), 0)
        # new_full is a fill kernel; new_tensor would copy from the host and wait for the stream (a device sync)
        window = torch.stack([loss_sum.detach() - self.mark[0], loss_sum.new_full((), float(seen - self.mark[1]))])
        self.mark = (loss_sum.detach().clone(), seen)
        self.pending = (step, lr, DeferredReduce(window, self.world_size))  # the same call on every process, in order

    def flush(self) -> None:
        if self.pending is None:
            return
        step, lr, window = self.pending
        self.pending = None
        loss_sum, images = window.read()
        self.log({"train/loss": loss_sum / max(images, 1.0), "train/lr": lr}, step=step)

    def start_epoch(self) -> None:
        """Before each epoch: the engine's running loss starts again from 0."""
        self.mark = None


def log_wandb_final(tracker, curves: Path, confusion, classes: list[str], samples: list[tuple]) -> None:
    """The curves image, the confusion matrix (counts: rows true, columns predicted) and sample predictions.

    tracker: the wandb run (accelerator.get_tracker("wandb", unwrap=True)); samples: (uint8 CxHxW, true, pred, p)."""
    import wandb

    y_true, y_pred = [], []
    for t in range(len(classes)):
        for p in range(len(classes)):
            count = int(confusion[t, p])
            y_true += [t] * count
            y_pred += [p] * count
    table = wandb.Table(columns=["image", "true", "predicted", "confidence"])
    for image, true, pred, conf in samples:
        table.add_data(wandb.Image(image.permute(1, 2, 0).numpy()), classes[true], classes[pred], round(conf, 4))
    tracker.log({
        "curves": wandb.Image(str(curves)),
        "confusion_matrix": wandb.plot.confusion_matrix(y_true=y_true, preds=y_pred, class_names=list(classes)),
        "sample_predictions": table,
    })


def log_wandb_model(run, run_dir: Path, metadata: dict) -> None:
    """model_best and model_last, each with config.yaml, as versions of the artifact model-<run id> (aliases best,
    last); the same weights (the last epoch was the best) make one version with both aliases."""
    import wandb

    for which in ("best", "last"):
        path = run_dir / f"model_{which}.safetensors"
        if not path.is_file():  # save_best=false
            continue
        artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=dict(metadata, weights=which))
        artifact.add_file(str(path), name="model.safetensors")
        artifact.add_file(str(run_dir / "config.yaml"))
        run.log_artifact(artifact, aliases=[which])
