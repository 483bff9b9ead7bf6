"""What people watching a run see: the console and Weights & Biases (the run directory's files: resnet_lite.files,
its figures: resnet_lite.plots).

Everything here runs on the main process only (the trainer passes enabled=False elsewhere). On a terminal the
console is a rich progress bar per epoch (images/s, loss, lr, ETA) and a table row per epoch; when stdout is a
file or a pipe it is plain lines a log file can follow: progress every PLAIN_EVERY seconds and one line per epoch.
"""
import math
import netrc
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlparse


__all__ = ["Progress", "fmt_time", "wandb_mode", "log_wandb_final", "print_final"]

PLAIN_EVERY = 30.0  # seconds between plain progress lines
REFRESH_EVERY = 0.5  # seconds between reads of the running loss: each read waits for the device


def fmt_time(seconds: float) -> str:
    """H:MM:SS"""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress of the training loop; `update` is cheap except every REFRESH_EVERY seconds."""

    COLUMNS = ("epoch", "train loss", "test loss", "test acc", "lr", "time", "img/s")

    def __init__(self, enabled: bool, epochs: int, steps_per_epoch: int, interactive: bool | None = None):
        self.enabled, self.epochs, self.steps_per_epoch = enabled, epochs, steps_per_epoch
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.bar = self.console = None
        if enabled and self.interactive:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self.console = Console()
            self.bar = Bar(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[ips]:>7.0f} img/s  loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"),
                           TimeRemainingColumn(), console=self.console, transient=True)
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
        self.loss, self.lr = math.nan, 0.0
        if self.bar:
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.steps_per_epoch, completed=done_steps,
                                          epoch=f"{epoch}/{self.epochs}", ips=0.0, loss=math.nan, lr=0.0)

    def update(self, images: int, loss, lr: float) -> None:
        """images: global images of this step; loss: a callable giving the running train loss (waits for the device)."""
        if not self.enabled:
            return
        self.done += 1
        self.images += images
        now = time.perf_counter()
        if now - self.last_read < REFRESH_EVERY and self.done < self.steps_per_epoch:
            if self.bar:
                self.bar.update(self.task, completed=self.done)
            return
        self.last_read, self.loss, self.lr = now, loss(), lr
        ips = self.images / max(now - self.start, 1e-9)
        if self.bar:
            self.bar.update(self.task, completed=self.done, ips=ips, loss=self.loss, lr=lr)
        elif now - self.last_plain >= PLAIN_EVERY:
            self.last_plain = now
            eta = (self.steps_per_epoch - self.done) * (now - self.start) / max(self.done, 1)
            print(f"epoch {self.epoch}/{self.epochs} step {self.done}/{self.steps_per_epoch} loss {self.loss:.4f} "
                  f"lr {lr:.2e} {ips:.0f} img/s eta {fmt_time(eta)}", flush=True)

    def end_epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        if self.bar:
            self.bar.remove_task(self.task)
            self.bar.stop()
        acc = "-" if row["test_acc"] is None else f"{100 * row['test_acc']:.2f}%"
        test_loss = "-" if row["test_loss"] is None else f"{row['test_loss']:.4f}"
        cells = (f"{row['epoch']}/{self.epochs}", f"{row['train_loss']:.4f}", test_loss, acc, f"{row['lr']:.2e}",
                 f"{row['epoch_seconds']:.1f}s", f"{row['images_per_second']:.0f}")
        widths = (9, 10, 9, 8, 9, 8, 8)
        if not self.header_done:
            self.print("  ".join(c.rjust(w) for c, w in zip(self.COLUMNS, widths)))
            self.header_done = True
        self.print("  ".join(c.rjust(w) for c, w in zip(cells, widths)))

    def close(self) -> None:
        if self.bar:
            self.bar.stop()


def print_final(summary: dict, classes: list[str]) -> None:
    """The final table: accuracies, time, and accuracy per class."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['model']}: {summary['epochs']} epochs, {summary['run_dir']}")
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [("best test acc", f"{100 * summary['best_test_acc']:.2f}% (epoch {summary['best_epoch']})"),
            ("final test acc", f"{100 * summary['final_test_acc']:.2f}%"),
            ("params", f"{summary['params']:,}"),
            ("processes", str(summary["world_size"])),
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


def wandb_mode(setting: str) -> tuple[str, str | None]:
    """(online | offline | disabled, a one-line hint or None). 'auto' follows WANDB_MODE when set, else it is online
    when the user is logged in (WANDB_API_KEY or a netrc entry) and disabled otherwise."""
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
