"""What people watching a run see: the console and Weights & Biases (the run directory's files: resnet_lite.files,
its figures: resnet_lite.plots).

Everything here runs on the main process only (the trainer passes enabled=False elsewhere), except StepLog, which
every process calls so that its rows are all processes' mean. On a terminal the console is a rich progress bar per
epoch (images/s, loss, lr, the epoch's and the whole run's ETA, "evaluating" while it evaluates) and a table row per
epoch; when stdout is a file or a pipe it is plain lines a log file can follow: progress every PLAIN_EVERY seconds and
one line per epoch. W&B: WandbConfig, the run's names (wandb_settings), its summary metrics, per-step rows
(StepLog), the final media and the model artifacts.
"""
import netrc
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .errors import UserError

__all__ = ["WandbConfig", "WANDB_MODES", "Progress", "StepLog", "fmt_time", "wandb_mode", "wandb_settings",
           "define_wandb_metrics", "log_wandb_final", "log_wandb_model", "print_final"]

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
    name: str | None = field(default=None, metadata={"help": "the run's name; null -> $WANDB_NAME, else the run directory's"})
    group: str | None = field(default=None, metadata={
        "help": "runs shown together; null -> $WANDB_RUN_GROUP (a sweep sets its output folder's name)"})
    tags: str | None = field(default=None, metadata={"help": "comma-separated, e.g. cifar10,baseline; null -> $WANDB_TAGS"})
    notes: str | None = field(default=None, metadata={"help": "a description of the run; null -> $WANDB_NOTES"})
    log_every_steps: int = field(default=50, metadata={
        "help": "optimizer steps between history rows of the train loss (mean since the previous row, main "
                "process) and lr; read when the next is due, so the host never waits for them; 0 = per epoch only"})
    log_model: bool = field(default=False, metadata={
        "help": "upload model_best and model_last (with config.yaml) as versions of the artifact model-<run id>, "
                "aliases best and last"})

    def __post_init__(self):
        if self.log_every_steps < 0:
            raise UserError(f"wandb.log_every_steps={self.log_every_steps} must be >= 0 (0 = per epoch only)")

PLAIN_EVERY = 30.0  # seconds between plain progress lines
REFRESH_EVERY = 0.5  # seconds between reads of the running loss: each read waits for the device


def fmt_time(seconds: float) -> str:
    """H:MM:SS"""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress of the training loop; `update` is cheap except every REFRESH_EVERY seconds.

    The bar draws on its own copy of stdout's file descriptor: W&B's console capture (which wraps sys.stdout, or
    redirects the descriptor) then records the messages and the epoch table, not every redraw of the bar."""

    COLUMNS = ("epoch", "train loss", "test loss", "test acc", "lr", "time", "img/s")

    def __init__(self, enabled: bool, epochs: int, steps_per_epoch: int, interactive: bool | None = None,
                 done_steps: int = 0):
        """done_steps: optimizer steps of the run done before this process started (a resume)."""
        self.enabled, self.epochs, self.steps_per_epoch = enabled, epochs, steps_per_epoch
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.bar = self.console = self._tty = None
        self.remaining = max(epochs * steps_per_epoch - done_steps, 0)  # steps left in the whole run
        self.run_steps, self.run_start = 0, None  # steps this process trained, and since when
        if enabled and self.interactive:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self.console = Console()
            try:
                self._tty = os.fdopen(os.dup(sys.stdout.fileno()), "w")
            except (OSError, ValueError, AttributeError):  # a stdout without a descriptor
                self._tty = None
            self.bar = Bar(TextColumn("epoch {task.fields[epoch]} {task.fields[phase]}"), BarColumn(),
                           MofNCompleteColumn(),
                           TextColumn("{task.fields[ips]} img/s  loss {task.fields[loss]}  lr {task.fields[lr]}"),
                           TimeRemainingColumn(), TextColumn("run eta {task.fields[run_eta]}"),
                           console=Console(file=self._tty) if self._tty else self.console, transient=True)
        self.header_done = False

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self.console:
            self.console.print(text, highlight=False)
        else:
            print(text, flush=True)

    def start_epoch(self, epoch: int, done_steps: int = 0) -> None:
        """epoch: 1-based; done_steps: steps of this epoch already done before a resume."""
        self.epoch, self.done, self.images = epoch, done_steps, 0
        self.start = self.last_read = self.last_plain = time.perf_counter()
        self.run_start = self.run_start or self.start
        self.loss = None  # read at the epoch's first step: until then the bar shows "-", not a made-up nan
        if self.bar:
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.steps_per_epoch, completed=done_steps,
                                          epoch=f"{epoch}/{self.epochs}", phase="", ips="-", loss="-", lr="-",
                                          run_eta=self.run_eta())

    def run_eta(self) -> str:
        """Time left in the whole run: its steps left at this process's pace so far (evaluations included)."""
        if not self.run_steps:
            return "-:--:--"
        return fmt_time(self.remaining * (time.perf_counter() - self.run_start) / self.run_steps)

    def update(self, images: int, loss, lr: float) -> None:
        """images: global images of this step; loss: a callable giving the running train loss (waits for the device)."""
        if not self.enabled:
            return
        self.done += 1
        self.images += images
        self.run_steps += 1
        self.remaining = max(self.remaining - 1, 0)
        now = time.perf_counter()
        first = self.loss is None
        if not first and now - self.last_read < REFRESH_EVERY and self.done < self.steps_per_epoch:
            if self.bar:
                self.bar.update(self.task, completed=self.done)
            return
        self.last_read, self.loss, self.lr = now, loss(), lr
        ips = self.images / max(now - self.start, 1e-9)
        if self.bar:
            self.bar.update(self.task, completed=self.done, ips=f"{ips:>7.0f}", loss=f"{self.loss:.4f}",
                            lr=f"{lr:.2e}", run_eta=self.run_eta())
        elif now - self.last_plain >= PLAIN_EVERY:
            self.last_plain = now
            eta = (self.steps_per_epoch - self.done) * (now - self.start) / max(self.done, 1)
            print(f"epoch {self.epoch}/{self.epochs} step {self.done}/{self.steps_per_epoch} loss {self.loss:.4f} "
                  f"lr {lr:.2e} {ips:.0f} img/s eta {fmt_time(eta)} run eta {self.run_eta()}", flush=True)

    def evaluating(self) -> None:
        """The epoch's steps are done and its evaluation runs: the bar says so (a plain log gets its row after)."""
        if self.enabled and self.bar:
            self.bar.update(self.task, phase="evaluating")
            self.bar.refresh()  # now: a short evaluation would end before the next timed redraw

    def end_epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        if self.bar:
            self.bar.remove_task(self.task)
            self.bar.stop()
        acc = "-" if row["test_acc"] is None else f"{100 * row['test_acc']:.2f}%"
        test_loss = "-" if row["test_loss"] is None else f"{row['test_loss']:.4f}"
        cells = [f"{row['epoch']}/{self.epochs}", f"{row['train_loss']:.4f}", test_loss, acc, f"{row['lr']:.2e}",
                 f"{row['epoch_seconds']:.1f}s", f"{row['images_per_second']:.0f}"]
        widths, columns = [9, 10, 9, 8, 9, 8, 8], list(self.COLUMNS)
        if "test_acc_raw" in row:  # an EMA is evaluated: its accuracy, then the raw weights'
            columns[3] = "ema acc"
            raw = row["test_acc_raw"]
            cells.insert(4, "-" if raw is None else f"{100 * raw:.2f}%")
            columns.insert(4, "raw acc")
            widths.insert(4, 8)
        if not self.header_done:
            self.print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
            self.header_done = True
        self.print("  ".join(c.rjust(w) for c, w in zip(cells, widths)))

    def close(self) -> None:
        if self.bar:
            self.bar.stop()
        if self._tty:
            self._tty.close()
            self._tty = None


def print_final(summary: dict, classes: list[str]) -> None:
    """The final table: accuracies, time, and accuracy per class."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['model']}: {summary['epochs']} epochs, {summary['run_dir']}")
    table.add_column("")
    table.add_column("value", justify="right")
    which = " (EMA)" if summary.get("ema") else ""
    rows = [(f"best test acc{which}", f"{100 * summary['best_test_acc']:.2f}% (epoch {summary['best_epoch']})"),
            (f"final test acc{which}", f"{100 * summary['final_test_acc']:.2f}%")]
    if summary.get("final_test_acc_raw") is not None:
        rows.append(("final test acc (raw weights)", f"{100 * summary['final_test_acc_raw']:.2f}%"))
    rows += [("params", f"{summary['params']:,}"), ("processes", str(summary["world_size"])),
             ("training time", fmt_time(summary["total_seconds"]))]
    rows += [(f"  {name}", f"{100 * summary['per_class_acc'][name]:.2f}%") for name in classes[:20]]
    for row in rows:
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 100).print(table)


# ---------------------------------------------------------------------------------------------- Weights & Biases


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
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
        self.pending = None  # (step, lr, [loss sum, images] of the row: on the host once work and event are done)
        self.mark = None  # (loss_sum, images) at the previous row, on the device

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
        work = event = None
        if self.world_size > 1:
            work = torch.distributed.all_reduce(window, async_op=True)  # the same call on every process, in order
        if window.is_cuda:
            if work is not None:
                work.wait()  # NCCL: the stream waits for the reduction, the host does not
                work = None
            window = window.to("cpu", non_blocking=True)  # into pinned memory, as StopCheck's numbers
            event = torch.cuda.Event()
            event.record()
        self.pending = (step, lr, window, work, event)

    def flush(self) -> None:
        if self.pending is None:
            return
        step, lr, window, work, event = self.pending
        self.pending = None
        if work is not None:
            work.wait()
        if event is not None:
            event.synchronize()
        loss_sum, images = window.tolist()
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
