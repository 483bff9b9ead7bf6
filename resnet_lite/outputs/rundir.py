"""The run directory: what it holds, which weights are "the run's", whether a run may start in it, and its lock.

    runs/m5/
        config.yaml                the resolved settings, output_dir left null: a template for another run
        metrics.jsonl              a JSON line per epoch
        summary.json               written when the run ends
        model_best.safetensors     the selected epoch's weights (metadata: model, classes, mean/std, ...)
        model_last.safetensors     the final weights
        curves.png                 loss, accuracy and lr per epoch
        checkpoints/step-*.pt      resumable checkpoints (resnet_lite.outputs.checkpoint writes them)
        evaluation-*.json, confusion-*.png   resnet_lite.evaluate's results
        train.log                  a sweep's console of the run
        .lock                      held by the trainer writing the run
        wandb/, tensorboard/, dvclive/, .aim/   the trackers' own files (log_with: resnet_lite.outputs.trackers)
        profile/trace-rank<R>.json, profile/ops-rank<R>.txt   --profile N: each process's torch.profiler trace and top
                                   operators (resnet_lite.training.profiling)

The rules, for every command that writes here (train, sweep) or reads "a run" (evaluate, predict, export, fine-tuning):
- A directory that holds a run is continued only with --resume and replaced only with --overwrite, which removes the
  run's own files above (nothing else). --resume where there is no checkpoint starts a run only if nothing would be
  lost: the folder is empty, or holds no more than a run writes before its first epoch ends.
- One trainer at a time: the main process holds an exclusive flock on `.lock` for the whole run; the kernel drops it
  when the process dies, so a crash never leaves a stale lock. A second trainer gets one line naming the holder.
- A run's weights are model_last.safetensors; `best` asks for model_best.safetensors.

    with claim(cfg.output_dir, intent="new") as run_dir:   # the main process; UserError when the rules say no
        ...
"""
import contextlib
import errno
import fcntl
import itertools
import os
import socket
import time
from pathlib import Path

from ..errors import UserError

__all__ = ["CONFIG", "METRICS", "SUMMARY", "CURVES", "CHECKPOINTS", "TRAIN_LOG", "LOCK", "TENSORBOARD", "DVCLIVE",
           "PROFILE", "WEIGHTS", "CONFIG_HEADER", "RUN_OR_WEIGHTS", "default_path", "run_of", "profile_files",
           "weights_file", "evaluation_files", "held_run", "only_a_start", "clear_run", "check_writable", "claim",
           "claimed", "RunLock"]

CONFIG, METRICS, SUMMARY, CURVES = "config.yaml", "metrics.jsonl", "summary.json", "curves.png"
CHECKPOINTS, TRAIN_LOG, LOCK = "checkpoints", "train.log", ".lock"
TENSORBOARD, DVCLIVE = "tensorboard", "dvclive"  # the trackers' folders (resnet_lite.outputs.trackers)
PROFILE = "profile"
WEIGHTS = {"last": "model_last.safetensors", "best": "model_best.safetensors"}
EXPORTED = ("config.json", "model.safetensors")  # a timm-style folder written by `export --format safetensors`
EVALUATIONS = ("evaluation-*.json", "confusion-*.png")
# what a run writes beside checkpoints/
RUN_FILES = (CONFIG, METRICS, SUMMARY, WEIGHTS["best"], WEIGHTS["last"], CURVES)
CONFIG_HEADER = ("# the resolved settings of the run in this folder; output_dir is left out (null) so that the file "
                 "can serve as\n"
                 "# --config for a new run without pointing back here (continue this one with --resume)\n")
RUN_OR_WEIGHTS = "a run directory, a .safetensors weights file or a folder written by `export --format safetensors`"
INTENTS = ("new", "resume", "overwrite")


def default_path(name: str) -> Path:
    """runs/<name>-<YYYYmmdd-HHMMSS>, with -1, -2, ... when a run started in the same second."""
    base = f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(next(p for i in itertools.count() if not Path(p := base if i == 0 else f"{base}-{i}").exists()))


def run_of(checkpoint) -> Path:
    """The run directory a checkpoint file belongs to."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else checkpoint.parent


def profile_files(run_dir, rank: int) -> tuple[Path, Path]:
    """The Chrome trace and the operator table of process `rank`'s profile (--profile N)."""
    folder = Path(run_dir) / PROFILE
    return folder / f"trace-rank{rank}.json", folder / f"ops-rank{rank}.txt"


def weights_file(path, which: str = "last") -> Path:
    """The weights `path` names: a file as it is, an exported folder's model.safetensors, or a run directory's
    model_<which>.safetensors; a UserError saying what to give instead."""
    path = Path(path)
    if which not in WEIGHTS:
        raise UserError(f"--weights {which} is not one of {', '.join(WEIGHTS)}")
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"{path} does not exist; give {RUN_OR_WEIGHTS}")
    if all((path / name).is_file() for name in EXPORTED):
        return path / EXPORTED[1]
    weights = path / WEIGHTS[which]
    if weights.is_file():
        return weights
    other = next((k for k, name in WEIGHTS.items() if k != which and (path / name).is_file()), None)
    hint = (f"; its {WEIGHTS[other]} exists: use --weights {other} (or give that file)" if other else
            "; the run has not finished an epoch yet" if (path / CONFIG).is_file() else f"; give {RUN_OR_WEIGHTS}")
    raise UserError(f"{path} has no {WEIGHTS[which]}{hint}")


def evaluation_files(folder, name: str) -> tuple[Path, Path]:
    """Where an evaluation named `name` writes its report and its confusion matrix."""
    folder = Path(folder)
    return folder / f"evaluation-{name}.json", folder / f"confusion-{name}.png"


def _checkpoints(run_dir: Path) -> list[Path]:
    from .checkpoint import list_checkpoints  # checkpoint files are that module's; where they live is ours

    return list_checkpoints(run_dir / CHECKPOINTS)


def _metrics_rows(run_dir: Path) -> int:
    try:
        return sum(1 for line in (run_dir / METRICS).read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError):
        return 1  # unreadable: treat it as holding something


def _ours(config: Path) -> bool:
    try:
        with open(config) as f:
            return f.readline() == CONFIG_HEADER.splitlines(keepends=True)[0]
    except (OSError, UnicodeDecodeError):
        return False


def held_run(run_dir) -> list[str]:
    """What of a run `run_dir` holds: its files (RUN_FILES), checkpoints/ and evaluations; empty when none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    held = [name for name in RUN_FILES if (run_dir / name).is_file()]
    held += [f"{CHECKPOINTS}/"] * bool(_checkpoints(run_dir))
    held += sorted(p.name for pattern in EVALUATIONS for p in run_dir.glob(pattern))
    return held


def only_a_start(run_dir) -> bool:
    """Whether all `run_dir` holds of a run is what one writes before its first epoch ends (this package's own
    config.yaml, a metrics.jsonl without rows): starting again there loses nothing."""
    run_dir = Path(run_dir)
    held = set(held_run(run_dir))
    if not held <= {CONFIG, METRICS}:
        return False
    return (CONFIG not in held or _ours(run_dir / CONFIG)) and (METRICS not in held or _metrics_rows(run_dir) == 0)


def clear_run(run_dir) -> list[str]:
    """Remove a run's own files from `run_dir` (--overwrite): RUN_FILES, checkpoints and evaluations; returns the
    names removed. Other files, and wandb/ (its runs may not be synced yet), stay."""
    run_dir = Path(run_dir)
    removed = []
    for path in [*(run_dir / n for n in RUN_FILES), *_checkpoints(run_dir),
                 *(p for pattern in EVALUATIONS for p in run_dir.glob(pattern))]:
        if path.is_file():
            path.unlink()
            removed.append(str(path.relative_to(run_dir)))
    return removed


def check_writable(run_dir) -> None:
    """A one-line error now, before any data is loaded, for a run directory that cannot be created or written."""
    run_dir = Path(run_dir)
    parent = run_dir
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create the run directory {run_dir}: {parent} is a file; choose another --output-dir")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {parent} (permission denied); choose another --output-dir")


class RunLock:
    """An exclusive flock on `<run_dir>/.lock`, held by one process: acquire() raises a UserError naming the holder
    (pid, host, since when) when another process holds it. The file stays after release (removing a lock file lets a
    waiting process lock a file no one else can see); it holds the last holder's line, which is read only while held."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK
        self.fd, self.created = None, False

    def acquire(self) -> None:
        self.created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise UserError(f"cannot lock {self.path} ({e.strerror}); choose another --output-dir") from None
            holder = self.path.read_text(errors="replace").strip() or "a trainer that is starting"
            raise UserError(f"{self.path.parent} is in use by another trainer ({holder}); wait for it to end (or stop "
                            f"it), or choose another --output-dir") from None
        self.fd = fd

    def write_holder(self) -> None:
        """Say who holds the lock, for a second trainer's error message."""
        line = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, line.encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _refusal(run_dir: Path, intent: str, resume_from) -> str | None:
    """Why a run with this intent may not write in `run_dir` (None: it may). Called with the lock held."""
    if intent == "overwrite":
        return None
    if intent == "resume" and resume_from is not None and run_of(resume_from).resolve() == run_dir.resolve():
        return None  # continuing this run
    held = held_run(run_dir)
    if not held:
        return None
    if intent == "resume" and resume_from is None:  # --resume found no checkpoint here
        if only_a_start(run_dir):
            return None
        return (f"{run_dir} holds {', '.join(held)} but no checkpoint to continue; pass --overwrite to start the run "
                f"again (those files are then removed), or choose another --output-dir")
    return (f"{run_dir} already holds a run ({', '.join(held)}); continue it with --resume, choose another "
            f"--output-dir, or pass --overwrite to replace it")


@contextlib.contextmanager
def claim(run_dir, intent: str = "new", resume_from=None):
    """Hold `run_dir` for one run: create it if needed, lock it, and check the rules for `intent` (new, resume,
    overwrite; resume_from: the checkpoint continued, None when --resume found none). Yields the lock; on a UserError
    (the rules, another holder) nothing in the folder changed, and a folder this call created is removed again when
    the run leaves nothing but the lock in it."""
    if intent not in INTENTS:
        raise ValueError(f"intent {intent!r} is not one of {INTENTS}")
    run_dir = Path(run_dir)
    check_writable(run_dir)
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # the folders this call makes, innermost first
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run directory {run_dir} ({e.strerror}); "
                        f"choose another --output-dir") from None
    lock = RunLock(run_dir)
    try:
        lock.acquire()
        try:
            if reason := _refusal(run_dir, intent, resume_from):
                if lock.created:  # a refused run leaves the folder exactly as it was
                    lock.path.unlink(missing_ok=True)
                raise UserError(reason)
            lock.write_holder()
            yield lock
        finally:
            lock.release()
    finally:
        if created and {p.name for p in run_dir.iterdir()} <= {LOCK, CHECKPOINTS} and not _checkpoints(run_dir):
            for leftover in (run_dir / LOCK, run_dir / CHECKPOINTS):
                with contextlib.suppress(OSError):
                    leftover.rmdir() if leftover.is_dir() else leftover.unlink()
            for folder in created:  # runs/ too, for a default runs/<name>-<time>, when nothing else went there
                with contextlib.suppress(OSError):
                    folder.rmdir()


@contextlib.contextmanager
def claimed(run_dir, name: str, accelerator, intent: str = "new", resume_from=None):
    """claim() for a run of every process of `accelerator`: the main process picks the folder (`run_dir`, else
    default_path(name)), claims it and holds it until the block ends; every process gets the same folder (yielded as a
    Path) or the same UserError. One clock and one look at the folder: a process that looked after the main one had
    written config.yaml would refuse alone and leave the others waiting."""
    stack = contextlib.ExitStack()
    decision: list[str | None] = [None, None]  # (folder, the error)
    if accelerator.is_main_process:
        decision[0] = str(run_dir or default_path(name))
        try:
            stack.enter_context(claim(decision[0], intent, resume_from))
        except UserError as e:
            decision[1] = str(e)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(decision)
    if decision[1]:
        raise UserError(decision[1])
    assert decision[0] is not None  # the main process chose it, and the broadcast gave it to every process
    with stack:
        yield Path(decision[0])
