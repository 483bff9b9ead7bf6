"""Running a sweep's runs on this machine: one after another, or one per GPU at a time."""
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from ..errors import UserError
from ..training.signals import EXIT_PREEMPTED
from .plan import _as_run
from .results import _finished, collect, write_results
from .slurm import run_on_slurm

__all__ = ["run_sweep", "parse_launcher"]

POLL = 0.5  # seconds between checks on the running trainers
STOP_GRACE = 30  # seconds a stopped trainer gets to exit before it is killed
def _stop(running: dict) -> None:
    """SIGTERM each trainer's process group (a launcher's workers too), then SIGKILL what is left after STOP_GRACE."""
    def signal_group(proc, sig):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the group has already gone
            pass

    for proc in running:
        if proc.poll() is None:
            signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait()


def parse_launcher(launcher: str | None) -> tuple[str, list[str]]:
    """--launcher as ('local', [python]), ('slurm', sbatch options) or ('command', its words)."""
    try:
        words = shlex.split("local" if launcher is None else launcher)
    except ValueError as e:  # an unbalanced quote
        raise UserError(f"--launcher {launcher}: {e}; quote its words as in a shell") from None
    if not words:
        raise UserError("--launcher is empty; give local, slurm [SBATCH OPTIONS] or a command such as "
                        "\"accelerate launch\"")
    if words[0] == "local":
        if len(words) > 1:
            raise UserError(f"--launcher {launcher}: local takes nothing after it (a command prefix is its own value)")
        return "local", [sys.executable]
    if words[0] == "slurm":
        return "slurm", words[1:]
    return "command", words


def run_sweep(presets, out_dir, train_args: list[str], gpus=(), launcher: str | None = None, settings: str = "",
              echo=print, grid=(), wait: bool = False) -> list[dict]:
    """Train every unfinished run (presets: Runs or preset names; train_args: flags and overrides for
    `resnet_lite.train`), one per GPU of `gpus` at a time or one after another, or all as one Slurm job array
    (launcher "slurm ..."); rewrite the results after each. Returns the rows of collect()."""
    runs = [_as_run(r) for r in presets]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind, prefix = parse_launcher(launcher)
    pending: deque = deque()  # PlannedRuns not started yet
    slots = deque(gpus or [None])
    for run in runs:
        if (out_dir / run.name / "summary.json").is_file():
            echo(f"{run.name}: finished earlier, skipped")
        else:
            pending.append(run)
    if kind == "slurm":
        return run_on_slurm(runs, list(pending), out_dir, train_args, prefix, settings=settings, grid=grid, wait=wait,
                            echo=echo)
    running: dict = {}  # Popen -> (run name, GPU, log file)
    failed: dict = {}
    try:
        while pending or running:
            while pending and slots:
                run, gpu = pending.popleft(), slots.popleft()
                run_dir = out_dir / run.name
                run_dir.mkdir(parents=True, exist_ok=True)
                cmd = [*prefix, "-m", "resnet_lite.train", "--variant", run.preset, "--output-dir", str(run_dir),
                       "--resume", *train_args, *run.overrides]
                env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": str(gpu)} if gpu is not None else {}))
                log = open(run_dir / "train.log", "a")
                where = f"CUDA_VISIBLE_DEVICES={gpu} " if gpu is not None else ""
                log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} sweep: {where}{shlex.join(cmd)}\n")
                log.flush()
                # its own session: a Ctrl-C reaches the sweep only, which then stops every run's whole process group
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
                running[proc] = (run.name, gpu, log)
                echo(f"{run.name}: started{f' on GPU {gpu}' if gpu is not None else ''} (pid {proc.pid}), "
                     f"log {run_dir / 'train.log'}")
            time.sleep(POLL)
            for proc, (name, gpu, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[proc]
                slots.append(gpu)
                log.close()
                if proc.returncode == 0:
                    echo(_finished(out_dir, name))
                elif proc.returncode == EXIT_PREEMPTED:
                    failed[name] = "interrupted (exit 75): checkpoint saved, the same command resumes it"
                    echo(f"{name}: interrupted by a signal after saving a checkpoint; the same command resumes it")
                else:
                    failed[name] = f"failed (exit {proc.returncode})"
                    echo(f"{name}: FAILED with exit status {proc.returncode}; see {out_dir / name / 'train.log'}")
                write_results(out_dir, collect(out_dir, runs, failed), settings, grid)
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):  # after a SIGHUP, writes to the closed terminal fail
            echo(f"stopping {len(running)} run(s); the same command resumes them")
        _stop(running)
        write_results(out_dir, collect(out_dir, runs, failed), settings, grid)
        raise
    rows = collect(out_dir, runs, failed)
    write_results(out_dir, rows, settings, grid)
    return rows
