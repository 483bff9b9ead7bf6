"""Train several presets as one study, by default the seed's whole Table 1, and set the results beside the seed's.

    python -m resnet_lite.sweep                                        # model0..model8 as the presets say (70 epochs)
    python -m resnet_lite.sweep model5 model8 --epochs 3 --data synthetic data.image_size=16   # a try on a CPU
    python -m resnet_lite.sweep --gpus 0,1,2,3                         # four runs at a time, one per GPU
    python -m resnet_lite.sweep --launcher "accelerate launch --config_file launch/multi_gpu.yaml"   # each run on all GPUs

Each preset runs `python -m resnet_lite.train --variant PRESET --output-dir OUTPUT_DIR/PRESET --resume` in its own process
(prefixed by --launcher when given) with its console in OUTPUT_DIR/PRESET/train.log. A run with a summary.json is done
and skipped; one with checkpoints continues from its newest, so after an interruption (Ctrl-C, a lost node) the same
command finishes the study. The flags and KEY=VALUE overrides apply to every run (to change a finished run, remove its
folder or use another --output-dir). --gpus runs one preset per listed GPU at a time (CUDA_VISIBLE_DEVICES). With
W&B on, the runs share one group, OUTPUT_DIR's name (unless wandb.group= or $WANDB_RUN_GROUP says otherwise).
After every run, OUTPUT_DIR gets results.md and results.csv (the seed's Table 1 columns beside the measured best and
final accuracy, epochs, time and parameters) and results.png (every run's test accuracy per epoch in one figure).
"""
import csv
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import torch

from .config import list_presets, read_yaml, resolve_config
from .data import SPECS
from .errors import ArgumentParser, UserError, cli
from .files import read_metrics, write_text
from .models import SEED_TABLE
from .signals import EXIT_PREEMPTED

__all__ = ["run_sweep", "collect", "write_results", "main"]

SEED_PRESETS = [f"model{r['model']}" for r in SEED_TABLE]  # the default study: the seed's Table 1
POLL = 0.5  # seconds between checks on the running trainers
STOP_GRACE = 30  # seconds a stopped trainer gets to exit before it is killed
COLUMNS = [  # (csv name, markdown header): the seed's Table 1, then what this sweep measured
    ("preset", "preset"), ("model", "seed model"), ("train_batch", "train batch"), ("test_batch", "test batch"),
    ("optimizer", "optimizer"), ("lr", "lr"), ("variant", "variant"), ("seed_params", "seed params"),
    ("seed_acc", "seed acc %"), ("epochs", "epochs"), ("best_acc", "best acc %"), ("best_epoch", "best epoch"),
    ("final_acc", "final acc %"), ("params", "params"), ("seconds", "time"), ("status", "status")]


def _seed_row(preset: str) -> dict | None:
    return next((r for r in SEED_TABLE if f"model{r['model']}" == preset), None)


def collect(out_dir, presets, failed: dict | None = None) -> list[dict]:
    """One row per preset from what its run directory holds (config.yaml, summary.json, metrics.jsonl)."""
    rows = []
    for preset in presets:
        run, seed = Path(out_dir) / preset, _seed_row(preset) or {}
        row = {"preset": preset, "model": seed.get("model", ""), "train_batch": seed.get("train_batch", ""),
               "test_batch": seed.get("test_batch", ""), "optimizer": seed.get("optimizer", ""), "lr": seed.get("lr", ""),
               "variant": seed.get("variant", ""), "seed_params": seed.get("params", ""), "seed_acc": seed.get("acc", ""),
               "epochs": "", "best_acc": "", "best_epoch": "", "final_acc": "", "params": "", "seconds": ""}
        metrics = read_metrics(run / "metrics.jsonl")
        if (run / "summary.json").is_file():
            s = json.loads((run / "summary.json").read_text())
            row.update(epochs=s["epochs"], best_acc=round(100 * s["best_test_acc"], 4), best_epoch=s["best_epoch"],
                       final_acc=round(100 * s["final_test_acc"], 4), params=s["params"],
                       seconds=round(s["total_seconds"], 1), status="finished")
        else:
            row["epochs"] = metrics[-1]["epoch"] if metrics else ""
            row["status"] = "interrupted" if (run / "checkpoints").is_dir() else "not started"
        if not row["variant"] and (run / "config.yaml").is_file():  # a preset outside the seed's table
            row["variant"] = read_yaml(run / "config.yaml").get("model", "")
        if failed and preset in failed:
            row["status"] = failed[preset]
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


def write_results(out_dir, rows: list[dict], settings: str) -> None:
    """results.csv, results.md and results.png in `out_dir`, each written whole or not at all."""
    out_dir = Path(out_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, [key for key, _ in COLUMNS], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / "results.csv", buffer.getvalue())

    lines = ["# Sweep results beside the seed's Table 1", "",
             f"Settings shared by every run: {settings or 'none (each preset as it is)'}. The seed columns are Table 1 "
             "of the report (70 epochs, CIFAR-10); accuracies are on the test split, time is training time.", "",
             "| " + " | ".join(header for _, header in COLUMNS) + " |",
             "|" + "|".join("---" if key in ("preset", "optimizer", "variant", "status") else "---:" for key, _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(key, row[key]) for key, _ in COLUMNS) + " |" for row in rows]
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
            label = f"{row['preset']} ({row['variant']})" if row["variant"] else row["preset"]
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


def run_sweep(presets, out_dir, train_args: list[str], gpus=(), launcher: str | None = None, settings: str = "",
              echo=print) -> list[dict]:
    """Train every unfinished preset (train_args: flags and overrides for `resnet_lite.train`), one per GPU of `gpus`
    at a time or one after another; rewrite the results after each. Returns the rows of collect()."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = shlex.split(launcher) if launcher else [sys.executable]
    pending, slots = deque(), deque(gpus or [None])
    for preset in presets:
        if (out_dir / preset / "summary.json").is_file():
            echo(f"{preset}: finished earlier, skipped")
        else:
            pending.append(preset)
    running, failed = {}, {}
    try:
        while pending or running:
            while pending and slots:
                preset, gpu = pending.popleft(), slots.popleft()
                run_dir = out_dir / preset
                run_dir.mkdir(parents=True, exist_ok=True)
                cmd = [*prefix, "-m", "resnet_lite.train", "--variant", preset, "--output-dir", str(run_dir), "--resume",
                       *train_args]
                env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": str(gpu)} if gpu is not None else {}))
                log = open(run_dir / "train.log", "a")
                where = f"CUDA_VISIBLE_DEVICES={gpu} " if gpu is not None else ""
                log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} sweep: {where}{shlex.join(cmd)}\n")
                log.flush()
                # its own session: a Ctrl-C reaches the sweep only, which then stops every run's whole process group
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
                running[proc] = (preset, gpu, log)
                echo(f"{preset}: started{f' on GPU {gpu}' if gpu is not None else ''} (pid {proc.pid}), "
                     f"log {run_dir / 'train.log'}")
            time.sleep(POLL)
            for proc, (preset, gpu, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[proc]
                slots.append(gpu)
                log.close()
                if proc.returncode == 0:
                    s = json.loads((out_dir / preset / "summary.json").read_text())
                    echo(f"{preset}: finished, best {100 * s['best_test_acc']:.2f}% final {100 * s['final_test_acc']:.2f}% "
                         f"in {_hms(s['total_seconds'])}")
                elif proc.returncode == EXIT_PREEMPTED:
                    failed[preset] = "interrupted (exit 75): checkpoint saved, the same command resumes it"
                    echo(f"{preset}: interrupted by a signal after saving a checkpoint; the same command resumes it")
                else:
                    failed[preset] = f"failed (exit {proc.returncode})"
                    echo(f"{preset}: FAILED with exit status {proc.returncode}; see {out_dir / preset / 'train.log'}")
                write_results(out_dir, collect(out_dir, presets, failed), settings)
    except KeyboardInterrupt:
        echo(f"stopping {len(running)} run(s); the same command resumes them")
        _stop(running)
        write_results(out_dir, collect(out_dir, presets, failed), settings)
        raise
    rows = collect(out_dir, presets, failed)
    write_results(out_dir, rows, settings)
    return rows


def print_results(rows: list[dict], out_dir) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{out_dir}/results.md")
    keys = [k for k, _ in COLUMNS if k not in ("model", "test_batch", "seed_params")]
    for key, header in COLUMNS:
        if key in keys:
            table.add_column(header, justify="left" if key in ("preset", "optimizer", "variant", "status") else "right")
    for row in rows:
        table.add_row(*(_cell(k, row[k]) for k in keys))
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def build_parser() -> ArgumentParser:
    p = ArgumentParser("python -m resnet_lite.sweep", __doc__)
    p.add_argument("items", nargs="*", metavar="PRESET_OR_KEY=VALUE",
                   help=f"presets to run (default: {' '.join(SEED_PRESETS)}; all: {' '.join(list_presets())}) and "
                        "overrides for every run, "
                        "e.g. data.image_size=16")
    p.add_argument("--output-dir", default="runs/sweep", metavar="DIR", help="one folder per preset (default runs/sweep)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--data", metavar="SPEC", help=f"dataset: {SPECS} (default: each preset's, cifar10)")
    p.add_argument("--data-dir", metavar="DIR", help="where datasets are downloaded and cached (data.root)")
    p.add_argument("--batch-size", type=int, help="GLOBAL training batch of every run (default: each preset's)")
    p.add_argument("--wandb", choices=["online", "offline", "disabled"])
    p.add_argument("--gpus", metavar="IDS", help="comma-separated GPU ids: runs go one per GPU, this many at a time")
    p.add_argument("--launcher", metavar="CMD", help='what runs `-m resnet_lite.train ...`: default this Python; e.g. '
                                                     '"accelerate launch --num_processes 2" or "torchrun --nproc_per_node 2"')
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


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt  # stop the runs as Ctrl-C does (a scheduler's cancel, `kill`)


@cli
def main(argv=None):
    args = build_parser().parse_intermixed_args(argv)  # presets and overrides may sit on either side of flags
    presets = [i for i in args.items if "=" not in i] or SEED_PRESETS
    overrides = [i for i in args.items if "=" in i]
    if len(set(presets)) != len(presets):
        raise UserError(f"a preset is listed twice in {' '.join(presets)}")
    flags = {"data.spec": args.data, "data.root": args.data_dir, "epochs": args.epochs, "batch_size": args.batch_size,
             "wandb.mode": args.wandb}
    for preset in presets:  # every mistake in the settings shows now, not hours into the sweep
        resolve_config(preset, flags=flags, overrides=overrides)
    gpus = _gpus(args.gpus)
    train_args = []
    for flag, value in (("--epochs", args.epochs), ("--data", args.data), ("--data-dir", args.data_dir),
                        ("--batch-size", args.batch_size), ("--wandb", args.wandb)):
        if value is not None:
            train_args += [flag, str(value)]
    settings = shlex.join(train_args + overrides)
    if not any(o.startswith("wandb.group=") for o in overrides) and not os.environ.get("WANDB_RUN_GROUP"):
        overrides.append(f"wandb.group={Path(args.output_dir).resolve().name}")  # the study's runs shown together
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        rows = run_sweep(presets, args.output_dir, train_args + overrides, gpus, args.launcher, settings,
                         echo=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(f"interrupted; results so far in {args.output_dir}/results.md", file=sys.stderr)
        return 130
    print_results(rows, args.output_dir)
    failed = [r["preset"] for r in rows if r["status"].startswith("failed")]
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}; see their train.log", file=sys.stderr)
        return 1
    interrupted = [r["preset"] for r in rows if r["status"].startswith("interrupted")]
    if interrupted:
        print(f"{len(interrupted)} run(s) interrupted after saving: {', '.join(interrupted)}; "
              "run the same command to resume them", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
