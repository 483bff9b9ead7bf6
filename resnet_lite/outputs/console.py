"""What a person watching a run's console sees: a rich progress bar per epoch on a terminal (images/s, loss, lr, the
epoch's and the whole run's ETA, "evaluating" while it evaluates) and a table row per epoch; plain lines a log file
can follow when stdout is a file or a pipe (progress every PLAIN_EVERY seconds, a line per epoch); the final table.
Everything here runs on the main process only (the trainer passes enabled=False elsewhere).
"""
import os
import sys
import time

__all__ = ["Progress", "fmt_time", "counted", "progress_line", "print_final", "console"]


def console(width: int = 120):
    """A rich Console: the terminal's width, or `width` columns when stdout is a file or a pipe."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else width)


PLAIN_EVERY = 30.0  # seconds between plain progress lines
REFRESH_EVERY = 0.5  # seconds between reads of the running loss: each read waits for the device


def counted(n: int, noun: str) -> str:
    """'1 epoch', '3 epochs'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


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
        self.run_steps = 0  # steps this process trained
        self.run_start: float | None = None  # since when: its first epoch's start
        if enabled and self.interactive:
            from rich.console import Console
            from rich.progress import Progress as Bar

            self.console = Console()
            try:
                self._tty = os.fdopen(os.dup(sys.stdout.fileno()), "w")
            except (OSError, ValueError, AttributeError):  # a stdout without a descriptor
                self._tty = None
            bar_console = Console(file=self._tty) if self._tty else self.console
            self.bar = Bar(progress_line(lambda: bar_console.width), console=bar_console, transient=True)
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
        self.epoch, self.done, self.first_done, self.images = epoch, done_steps, done_steps, 0
        self.start = self.last_read = self.last_plain = time.perf_counter()
        self.run_start = self.run_start or self.start
        self.loss = None  # read at the epoch's first step: until then the bar shows "-", not a made-up nan
        if self.bar:
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.steps_per_epoch, completed=done_steps,
                                          epoch=f"{epoch}/{self.epochs}", phase="", ips="-", loss="-", lr="-",
                                          eta="-:--:--", run_eta=self.run_eta())

    def run_eta(self) -> str:
        """Time left in the whole run: its steps left at this process's pace so far (evaluations included)."""
        if not self.run_steps:
            return "-:--:--"
        assert self.run_start is not None  # start_epoch() set it before the first step
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
        eta = (self.steps_per_epoch - self.done) * (now - self.start) / max(self.done - self.first_done, 1)
        if self.bar:
            self.bar.update(self.task, completed=self.done, ips=f"{ips:.0f}", loss=f"{self.loss:.4f}",
                            lr=f"{lr:.2e}", eta=fmt_time(eta), run_eta=self.run_eta())
        elif now - self.last_plain >= PLAIN_EVERY:
            self.last_plain = now
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
            self.print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
            self.header_done = True
        self.print("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))

    def close(self) -> None:
        if self.bar:
            self.bar.stop()
        if self._tty:
            self._tty.close()
            self._tty = None


def progress_line(width):
    """The bar's one column: the epoch, its step count and ETA and the run's ETA first, then images/s, loss and lr,
    and a bar in the room left (none under BAR_MIN columns), so that the counts and ETAs stay whole in an 80-column
    terminal. width: a callable giving the terminal's current width."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Line(ProgressColumn):
        def render(self, task) -> Text:
            f = task.fields
            left = (f"epoch {f['epoch']} {f['phase'] and f['phase'] + ' '}{int(task.completed)}/{int(task.total)} "
                    f"eta {f['eta']} run {f['run_eta']}")
            right = f"{f['ips']} img/s loss {f['loss']} lr {f['lr']}"
            room = width() - len(left) - len(right) - 3  # three spaces; rich keeps the last column off the edge
            if room < BAR_MIN:  # one line, cut at the right when even the words are too wide
                return Text(f"{left} {right}", no_wrap=True, overflow="ellipsis")
            filled = round(room * task.completed / max(task.total or 1, 1))
            return Text.assemble(left, " ", ("━" * filled, "bar.complete"), ("━" * (room - filled), "bar.back"), " ",
                                 right, no_wrap=True, overflow="ellipsis")

    return Line()


BAR_MIN = 10  # columns


def print_final(summary: dict, classes: list[str]) -> None:
    """The final table: accuracies, time, and accuracy per class."""
    from rich.table import Table

    table = Table(title=f"{summary['model']}: {counted(summary['epochs'], 'epoch')}, {summary['run_dir']}")
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
    console(100).print(table)


