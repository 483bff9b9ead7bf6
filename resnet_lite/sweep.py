"""Train several presets as one study, by default the seed's whole Table 1, and set the results beside the seed's; or
a grid of settings, on this machine or as one Slurm job array.

    python -m resnet_lite.sweep                                        # model0..model8 as the presets say (70 epochs)
    python -m resnet_lite.sweep model5 model8 --epochs 3 --data synthetic data.image_size=16   # a try on a CPU
    python -m resnet_lite.sweep --gpus 0,1,2,3                         # four runs at a time, one per GPU
    python -m resnet_lite.sweep --launcher "accelerate launch --config_file launch/multi_gpu.yaml"   # each run on all GPUs
    python -m resnet_lite.sweep model5 optim.lr=0.01,0.003,0.001 --seeds 3   # a grid: 9 runs, lr0.01-seed0 ...
    python -m resnet_lite.sweep model5 optim.lr=0.01,0.003 --launcher "slurm --gpus-per-node=1" --wait   # a job array

Each run is `python -m resnet_lite.train --variant PRESET --output-dir OUTPUT_DIR/RUN --resume` in its own process
(prefixed by --launcher when given) with its console in OUTPUT_DIR/RUN/train.log; RUN is the preset, or for a grid
the values that differ (KEY=V1,V2,... lists a setting's values, --seeds N adds seed=0..N-1; with several presets the
preset leads the name). A run with a summary.json is done and skipped; one with checkpoints continues from its newest,
so after an interruption (Ctrl-C, a closed terminal, a lost node) the same command finishes the study. The flags and
single-valued KEY=VALUE overrides apply to every run (to change a finished run, remove its folder or use another
--output-dir).
--gpus runs one run per listed GPU at a time (CUDA_VISIBLE_DEVICES). With W&B on, the runs share one group, OUTPUT_DIR's
name (unless wandb.group= or $WANDB_RUN_GROUP says otherwise).
--launcher slurm [SBATCH OPTIONS] submits the unfinished runs as one job array of launch/slurm_1node.sbatch, a task per
run (time-limit warnings requeue and resume each task there); --wait waits for the array and collects it, and running
the same command again while the array is queued waits for it (or reports it) rather than submitting it twice (also
after an sbatch that did not answer: the array is found by its --comment, written to OUTPUT_DIR/slurm.json first).
After every run, OUTPUT_DIR gets results.md and results.csv (the seed's Table 1 columns beside the measured best and
final accuracy, epochs, time and parameters; for a grid, each run's own settings instead of the seed's) and results.png
(every run's test accuracy per epoch in one figure).
"""
import contextlib
import csv
import io
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import list_presets, read_yaml, resolve_config
from .data import SPECS
from .errors import ArgumentParser, UserError, cli
from .files import read_metrics, write_text
from .models import SEED_TABLE
from .signals import EXIT_PREEMPTED

__all__ = ["Run", "plan_runs", "run_sweep", "collect", "write_results", "main"]

SEED_PRESETS = [f"model{r['model']}" for r in SEED_TABLE]  # the default study: the seed's Table 1
POLL = 0.5  # seconds between checks on the running trainers
STOP_GRACE = 30  # seconds a stopped trainer gets to exit before it is killed
SLURM_POLL = (2, 10)  # seconds between looks at a Slurm array's queue: the first, growing to the most
SLURM_TIMEOUT = 120  # seconds an sbatch or squeue may take to answer (a busy controller) before the sweep stops waiting
COLUMNS = [  # (csv name, markdown header): the seed's Table 1, then what this sweep measured
    ("preset", "preset"), ("model", "seed model"), ("train_batch", "train batch"), ("test_batch", "test batch"),
    ("optimizer", "optimizer"), ("lr", "lr"), ("variant", "variant"), ("seed_params", "seed params"),
    ("seed_acc", "seed acc %"), ("epochs", "epochs"), ("best_acc", "best acc %"), ("best_epoch", "best epoch"),
    ("final_acc", "final acc %"), ("params", "params"), ("seconds", "time"), ("status", "status")]
MEASURED = COLUMNS[COLUMNS.index(("epochs", "epochs")):]
TEXT_COLUMNS = ("run", "preset", "optimizer", "variant", "status")


@dataclass(frozen=True)
class Run:
    """One run of a sweep: its folder under OUTPUT_DIR, its preset, and its own settings ((key, value text), ...)."""
    name: str
    preset: str
    settings: tuple = ()

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.settings]


def _values(text: str) -> list[str]:
    """'0.1,0.01' -> ['0.1', '0.01']; a comma inside [...] or {...} (a YAML list or mapping) does not split."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    return [*values, current]


def plan_runs(presets, overrides, seeds: int | None = None) -> tuple[list[Run], list[str], list[str]]:
    """(runs, overrides shared by all, the grid's keys): every preset with every combination of the KEY=V1,V2,...
    values (and seed=0..seeds-1), named by the values that differ (`lr0.01-seed0`)."""
    shared, axes = [], []
    for override in overrides:
        key, _, value = override.partition("=")
        key, values = key.strip(), _values(value)
        if key == "output_dir":
            raise UserError(f"{override} would put every run of the sweep in one folder; each run gets its own under "
                            "--output-dir, the sweep's folder (default runs/sweep): set that instead")
        if len(values) == 1:
            shared.append(override)
        elif "" in values:
            raise UserError(f"{override} has an empty value; list them as {key}=V1,V2")
        elif key in dict(axes):
            raise UserError(f"{key} is given two lists of values; give it one, e.g. {key}={','.join(values)}")
        else:
            axes.append((key, values))
    if seeds is not None:
        if seeds < 1:
            raise UserError(f"--seeds {seeds} must be >= 1")
        if "seed" in dict(axes) or any(o.partition("=")[0].strip() == "seed" for o in shared):
            raise UserError("--seeds and a seed= setting both choose the seeds; keep one")
        axes.append(("seed", [str(i) for i in range(seeds)]))
    keys = [key for key, _ in axes]
    leaves = [key.rsplit(".", 1)[-1] for key in keys]
    short = {key: leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(keys, leaves)}
    runs = []
    for preset in presets:
        for combo in itertools.product(*(values for _, values in axes)):
            settings = tuple(zip(keys, combo))
            parts = [preset] if len(presets) > 1 or not axes else []
            parts += [short[key] + re.sub(r"[^\w.+-]", "_", value) for key, value in settings]
            runs.append(Run("-".join(parts), preset, settings))
    names = [run.name for run in runs]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice:
        raise UserError(f"two runs of the grid would share the folder {twice}; give values that differ in letters "
                        "or digits")
    return runs, shared, keys


def _as_run(run) -> Run:
    return run if isinstance(run, Run) else Run(run, run)


def _columns(grid) -> list[tuple[str, str]]:
    """The seed's Table 1 beside the measurements for presets; for a grid the run, its preset and its settings."""
    if not grid:
        return COLUMNS
    return [("run", "run"), ("preset", "preset"), *[(key, key) for key in grid], ("variant", "variant"), *MEASURED]


def _seed_row(preset: str) -> dict | None:
    return next((r for r in SEED_TABLE if f"model{r['model']}" == preset), None)


def collect(out_dir, runs, failed: dict | None = None) -> list[dict]:
    """One row per run (a Run, or a preset's name) from what its directory holds (config.yaml, summary.json,
    metrics.jsonl)."""
    rows = []
    for spec in map(_as_run, runs):
        run, seed = Path(out_dir) / spec.name, _seed_row(spec.preset) or {}
        row = {"run": spec.name, "preset": spec.preset, "model": seed.get("model", ""),
               "train_batch": seed.get("train_batch", ""), "test_batch": seed.get("test_batch", ""),
               "optimizer": seed.get("optimizer", ""), "lr": seed.get("lr", ""), "variant": seed.get("variant", ""),
               "seed_params": seed.get("params", ""), "seed_acc": seed.get("acc", ""),
               "epochs": "", "best_acc": "", "best_epoch": "", "final_acc": "", "params": "", "seconds": ""}
        row.update(spec.settings)  # a grid's own values (model=..., even): its columns
        metrics = read_metrics(run / "metrics.jsonl")
        if (run / "summary.json").is_file():
            s = json.loads((run / "summary.json").read_text())
            row.update(epochs=s["epochs"], best_acc=round(100 * s["best_test_acc"], 4), best_epoch=s["best_epoch"],
                       final_acc=round(100 * s["final_test_acc"], 4), params=s["params"],
                       seconds=round(s["total_seconds"], 1), status="finished")
        else:
            row["epochs"] = metrics[-1]["epoch"] if metrics else ""
            row["status"] = "interrupted" if (run / "checkpoints").is_dir() else "not started"
        if (run / "config.yaml").is_file():  # the model it trained (a preset outside the seed's table, model=...)
            row["variant"] = read_yaml(run / "config.yaml").get("model", row["variant"])
        if failed and spec.name in failed:
            row["status"] = failed[spec.name]
        row["curve"] = [(m["epoch"], 100 * m["test_acc"]) for m in metrics if m.get("test_acc") is not None]
        rows.append(row)
    return rows


def _hms(seconds) -> str:
    if seconds == "":
        return ""
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _cell(key, value) -> str:
    if key == "seconds":
        return _hms(value)
    if key in ("seed_params", "params") and value != "":
        return f"{value:,}"
    if key in ("best_acc", "final_acc") and value != "":
        return f"{value:.2f}"
    return str(value)


def write_results(out_dir, rows: list[dict], settings: str, grid=()) -> None:
    """results.csv, results.md and results.png in `out_dir`, each written whole or not at all. grid: the keys whose
    values differ between runs (their columns replace the seed's Table 1)."""
    out_dir, columns = Path(out_dir), _columns(grid)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, [key for key, _ in columns], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / "results.csv", buffer.getvalue())

    if grid:
        lines = ["# Sweep results", "",
                 f"Settings shared by every run: {settings or 'none (each preset as it is)'}; each run's own are in "
                 f"the columns {', '.join(grid)}. Accuracies are on the test split, time is training time.", ""]
    else:
        lines = ["# Sweep results beside the seed's Table 1", "",
                 f"Settings shared by every run: {settings or 'none (each preset as it is)'}. The seed columns are "
                 "Table 1 of the report (70 epochs, CIFAR-10); accuracies are on the test split, time is training "
                 "time.", ""]
    lines += ["| " + " | ".join(header for _, header in columns) + " |",
              "|" + "|".join("---" if key in TEXT_COLUMNS or key in grid else "---:" for key, _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(key, row[key]) for key, _ in columns) + " |" for row in rows]
    write_text(out_dir / "results.md", "\n".join(lines) + "\n")
    plot_results(rows, out_dir / "results.png")


def plot_results(rows: list[dict], path) -> None:
    """Every run's test accuracy per epoch in one figure (the seed report's Figures 1-9 on shared axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import atomic_write

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, row in enumerate(rows):
        if row["curve"]:
            epochs, acc = zip(*row["curve"])
            label = f"{row['run']} ({row['variant']})" if row["variant"] else row["run"]
            ax.plot(epochs, acc, marker="." if len(epochs) < 30 else None, color=plt.cm.tab10(i % 10), label=label)
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy per epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


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
    pending, slots = deque(), deque(gpus or [None])
    for run in runs:
        if (out_dir / run.name / "summary.json").is_file():
            echo(f"{run.name}: finished earlier, skipped")
        else:
            pending.append(run)
    if kind == "slurm":
        return _run_on_slurm(runs, list(pending), out_dir, train_args, prefix, settings, grid, wait, echo)
    running, failed = {}, {}
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


def _finished(out_dir, name) -> str:
    s = json.loads((Path(out_dir) / name / "summary.json").read_text())
    return (f"{name}: finished, best {100 * s['best_test_acc']:.2f}% final {100 * s['final_test_acc']:.2f}% "
            f"in {_hms(s['total_seconds'])}")


# ------------------------------------------------------------------------------------------------ Slurm job arrays


def _slurm(*cmd, env=None) -> subprocess.CompletedProcess | None:
    """Slurm's `cmd` run to its end; None when it has not answered within SLURM_TIMEOUT."""
    if not shutil.which(cmd[0]):
        raise UserError(f"--launcher slurm needs Slurm's {cmd[0]} on PATH; run the sweep where you run sbatch")
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=SLURM_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None


def _in_queue(job: str) -> bool | None:
    """Whether any task of array `job` is pending, running or completing; None when Slurm could not be asked."""
    proc = _slurm("squeue", "--noheader", f"--jobs={job}", "--format=%i")
    if proc is None:
        return None
    if proc.returncode == 0:
        return bool(proc.stdout.strip())
    return False if "Invalid job id" in proc.stderr else None


def _find_array(mark: str) -> str | None:
    """The id of the array submitted with --comment=`mark` while Slurm still lists it (in any state), else None; a
    UserError when squeue cannot say, since submitting then might run every task twice."""
    proc = _slurm("squeue", f"--user={os.getuid()}", "--noheader", "--states=all", "--format=%F %k")
    if proc is None or proc.returncode != 0:
        why = f"squeue did not answer in {SLURM_TIMEOUT} s" if proc is None else f"squeue failed: {proc.stderr.strip()}"
        raise UserError(f"cannot tell whether the sweep's last sbatch submitted its array ({why}); run the same "
                        "command again once squeue answers")
    for line in proc.stdout.splitlines():
        job, _, comment = line.strip().partition(" ")
        if comment == mark:
            return job
    return None


def _record_array(out_dir: Path, job: str, mark: str, names: list[str], echo) -> None:
    """OUTPUT_DIR/slurm.json for the submitted array, and each run's train.log a link to its task's console."""
    write_text(out_dir / "slurm.json", json.dumps({"job": job, "comment": mark, "runs": names}) + "\n")
    for i, name in enumerate(names):
        log = out_dir / name / "train.log"
        if log.is_symlink() or not log.exists():  # its console, as a local run's would be
            link = log.with_name(".train.log.new")
            link.unlink(missing_ok=True)
            link.symlink_to(f"../slurm-{job}_{i}.out")
            link.replace(log)
        echo(f"{name}: Slurm array task {job}_{i}, log {log}")


def _submit_array(runs: list[Run], out_dir: Path, train_args, sbatch_args, echo) -> str:
    """One job array of launch/slurm_1node.sbatch, task i running runs[i] (its directory and arguments in
    OUTPUT_DIR/slurm-tasks/i, which the script reads through ARRAY_TASKS); returns the array's job id."""
    from .launch import recipe

    tasks = out_dir / "slurm-tasks"
    tasks.mkdir(exist_ok=True)
    for old in tasks.iterdir():
        old.unlink()
    for i, run in enumerate(runs):
        words = ["--variant", run.preset, *train_args, *run.overrides]
        if any("\n" in w for w in words):
            raise UserError(f"{run.name}: a setting holds a line break, which a Slurm array task cannot be given")
        (out_dir / run.name).mkdir(parents=True, exist_ok=True)
        write_text(tasks / str(i), "\n".join([str((out_dir / run.name).resolve()), *words]) + "\n")
    script = Path(str(recipe("slurm_1node.sbatch")))
    # the sweep's own environment for every task (sbatch passes it on): its Python first on PATH
    env = dict(os.environ, ARRAY_TASKS=str(tasks.resolve()), LAUNCH_DIR=str(script.parent),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    # A mark of this submission, recorded before sbatch runs: an sbatch that submits and then times out, or a sweep
    # killed while it waits, leaves the array findable by its comment, so the next run never submits it again.
    mark, names = f"resnet_lite-sweep-{uuid.uuid4().hex[:16]}", [run.name for run in runs]
    write_text(out_dir / "slurm.json", json.dumps({"submitting": mark, "runs": names}) + "\n")
    cmd = ["sbatch", "--parsable", f"--array=0-{len(runs) - 1}", f"--output={out_dir.resolve()}/slurm-%A_%a.out",
           *sbatch_args, f"--comment={mark}", str(script)]
    proc = _slurm(*cmd, env=env)
    if proc is None:
        job = _find_array(mark)
        if job is None:
            raise UserError(f"sbatch did not answer in {SLURM_TIMEOUT} s and its array is not in the queue (yet); the "
                            "same command looks for it again before it submits anything")
        echo(f"sbatch did not answer in {SLURM_TIMEOUT} s but submitted array {job}")
    elif proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise UserError(f"sbatch did not take the array ({reason}); check the options after --launcher slurm")
    else:
        job = proc.stdout.strip().split(";")[0]
    _record_array(out_dir, job, mark, names, echo)
    return job


def _run_on_slurm(runs, pending, out_dir, train_args, sbatch_args, settings, grid, wait, echo) -> list[dict]:
    previous = json.loads((out_dir / "slurm.json").read_text()) if (out_dir / "slurm.json").is_file() else None
    if previous and "submitting" in previous:  # an sbatch that did not answer, or a sweep killed while it waited
        job = _find_array(previous["submitting"])
        if job:
            echo(f"Slurm array {job} was submitted by an earlier run of this sweep that did not hear back from sbatch")
            _record_array(out_dir, job, previous["submitting"], previous["runs"], echo)
            previous = {"job": job, "runs": previous["runs"]}
        else:
            previous = None  # it never reached Slurm, or has ended and left the queue: its runs say what is done
    if previous and _in_queue(previous["job"]) is not False:  # never submit a run that is still queued
        job, queued = previous["job"], [name for name in previous["runs"] if name in {r.name for r in runs}]
        echo(f"Slurm array {job} is still in the queue ({', '.join(queued)}): waiting for it, not submitting again"
             if wait else f"Slurm array {job} is still in the queue ({', '.join(queued)}): not submitting again")
        later = [run.name for run in pending if run.name not in queued]
        if later:
            echo(f"{', '.join(later)}: not in that array; run the same command again once it has ended")
    elif pending:
        job, queued = _submit_array(pending, out_dir, train_args, sbatch_args, echo), [run.name for run in pending]
    else:
        job, queued = None, []
    status = {name: f"queued in Slurm array {job}" for name in queued}
    if job and wait:
        done, silent_since, delay = set(), None, SLURM_POLL[0]
        try:
            while True:
                here = _in_queue(job)
                for name in queued:
                    if name not in done and (out_dir / name / "summary.json").is_file():
                        done.add(name)
                        echo(_finished(out_dir, name))
                        write_results(out_dir, collect(out_dir, runs, status), settings, grid)
                if here is False:
                    break
                silent_since = (silent_since or time.monotonic()) if here is None else None
                if silent_since and time.monotonic() - silent_since > 300:
                    raise UserError(f"squeue has not answered for 5 minutes; array {job} may still run: the same "
                                    "command with --wait collects it")
                time.sleep(delay)
                delay = min(SLURM_POLL[1], delay * 1.5)
        except KeyboardInterrupt:
            echo(f"Slurm array {job} goes on without the sweep; the same command with --wait collects it "
                 f"(scancel {job} stops it)")
            write_results(out_dir, collect(out_dir, runs, status), settings, grid)
            raise
        status = {name: f"failed: see {out_dir / name / 'train.log'}" for name in queued
                  if not (out_dir / name / "summary.json").is_file()}
    elif job:
        echo(f"the same command with --wait waits for array {job} and collects it")
    rows = collect(out_dir, runs, status)
    write_results(out_dir, rows, settings, grid)
    return rows


def print_results(rows: list[dict], out_dir, grid=()) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{out_dir}/results.md")
    columns = [(k, h) for k, h in _columns(grid) if k not in ("model", "test_batch", "seed_params")]
    for key, header in columns:
        table.add_column(header, justify="left" if key in TEXT_COLUMNS or key in grid else "right")
    for row in rows:
        table.add_row(*(_cell(k, row[k]) for k, _ in columns))
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def build_parser() -> ArgumentParser:
    p = ArgumentParser("python -m resnet_lite.sweep", __doc__)
    p.add_argument("items", nargs="*", metavar="PRESET_OR_KEY=VALUE",
                   help=f"presets to run (default: {' '.join(SEED_PRESETS)}; all: {' '.join(list_presets())}) and "
                        "overrides for every run, e.g. data.image_size=16, or a list of values to sweep over, e.g. "
                        "optim.lr=0.01,0.003 (a YAML list keeps its commas: optim.betas=[0.9,0.99])")
    p.add_argument("--seeds", type=int, metavar="N", help="each run with seed=0..N-1 (runs named ...-seed0)")
    p.add_argument("--output-dir", default="runs/sweep", metavar="DIR", help="one folder per run (default runs/sweep)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--data", metavar="SPEC", help=f"dataset: {SPECS} (default: each preset's, cifar10)")
    p.add_argument("--data-dir", metavar="DIR", help="where datasets are downloaded and cached (data.root)")
    p.add_argument("--batch-size", type=int, help="GLOBAL training batch of every run (default: each preset's)")
    p.add_argument("--wandb", choices=["online", "offline", "disabled"])
    p.add_argument("--gpus", metavar="IDS", help="comma-separated GPU ids: runs go one per GPU, this many at a time")
    p.add_argument("--launcher", metavar="CMD", help='what runs `-m resnet_lite.train ...`: local (the default: this '
                                                     'Python), a command such as "accelerate launch --num_processes 2" '
                                                     'or "torchrun --nproc_per_node 2", or slurm [SBATCH OPTIONS]: one '
                                                     'job array of launch/slurm_1node.sbatch, e.g. "slurm --gpus-per-node=1 '
                                                     '--time=04:00:00"')
    p.add_argument("--wait", action="store_true", help="with --launcher slurm: wait for the array, then collect it")
    return p


def _gpus(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        ids = [int(g) for g in text.split(",")]
    except ValueError:
        raise UserError(f"--gpus {text} is not a comma-separated list of GPU numbers, e.g. --gpus 0,1") from None
    if len(set(ids)) != len(ids) or min(ids) < 0:
        raise UserError(f"--gpus {text} must list distinct GPU numbers >= 0")
    if torch.cuda.is_available() and max(ids) >= torch.cuda.device_count():
        raise UserError(f"--gpus {text}: this node has {torch.cuda.device_count()} GPU(s), numbered from 0")
    if not torch.cuda.is_available():
        print(f"warning: no CUDA GPU here; the runs of --gpus {text} share the CPU", file=sys.stderr)
    return ids


def _on_stop_signal(signum, frame):
    raise KeyboardInterrupt  # stop the runs as Ctrl-C does (a scheduler's cancel, `kill`, a closed terminal)


@cli
def main(argv=None):
    args = build_parser().parse_intermixed_args(argv)  # presets and overrides may sit on either side of flags
    presets = [i for i in args.items if "=" not in i] or SEED_PRESETS
    overrides = [i for i in args.items if "=" in i]
    if len(set(presets)) != len(presets):
        raise UserError(f"a preset is listed twice in {' '.join(presets)}")
    runs, shared, grid = plan_runs(presets, overrides, args.seeds)
    flags = {"data.spec": args.data, "data.root": args.data_dir, "epochs": args.epochs, "batch_size": args.batch_size,
             "wandb.mode": args.wandb}
    for run in runs:  # every mistake in the settings shows now, not hours into the sweep
        resolve_config(run.preset, flags=flags, overrides=shared + run.overrides)
    kind, words = parse_launcher(args.launcher)
    if kind == "slurm" and any(w == "--comment" or w.startswith("--comment=") for w in words):
        raise UserError("--launcher slurm: the sweep sets sbatch's --comment itself (it finds its array by it); leave "
                        "--comment out")
    if kind == "slurm" and not shutil.which("sbatch"):
        raise UserError("--launcher slurm needs Slurm's sbatch on PATH; run the sweep where you run sbatch")
    if args.wait and kind != "slurm":
        raise UserError("--wait is for --launcher slurm (a local sweep always waits for its runs)")
    if args.gpus and kind == "slurm":
        raise UserError("--gpus is for runs on this machine; on Slurm ask for GPUs with --launcher \"slurm "
                        "--gpus-per-node=N\"")
    gpus = _gpus(args.gpus)
    train_args = []
    for flag, value in (("--epochs", args.epochs), ("--data", args.data), ("--data-dir", args.data_dir),
                        ("--batch-size", args.batch_size), ("--wandb", args.wandb)):
        if value is not None:
            train_args += [flag, str(value)]
    settings = shlex.join(train_args + shared)
    if not any(o.startswith("wandb.group=") for o in overrides) and not os.environ.get("WANDB_RUN_GROUP"):
        shared.append(f"wandb.group={Path(args.output_dir).resolve().name}")  # the study's runs shown together
    for signum in (signal.SIGTERM, signal.SIGHUP):  # the trainers sit in sessions of their own: no SIGHUP reaches them
        signal.signal(signum, _on_stop_signal)
    try:
        rows = run_sweep(runs, args.output_dir, train_args + shared, gpus, args.launcher, settings,
                         echo=lambda line: print(line, flush=True), grid=grid, wait=args.wait)
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):
            print(f"interrupted; results so far in {args.output_dir}/results.md", file=sys.stderr)
        return 130
    print_results(rows, args.output_dir, grid)
    failed = [r["run"] for r in rows if r["status"].startswith("failed")]
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}; see their train.log", file=sys.stderr)
        return 1
    interrupted = [r["run"] for r in rows if r["status"].startswith("interrupted")]
    if interrupted:
        print(f"{len(interrupted)} run(s) interrupted after saving: {', '.join(interrupted)}; "
              "run the same command to resume them", file=sys.stderr)
        return EXIT_PREEMPTED
    queued = [r["run"] for r in rows if r["status"].startswith("queued")]
    if queued:
        print(f"{len(queued)} run(s) queued on Slurm: {', '.join(queued)}; the same command with --wait collects them",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
