"""python -m resnet_lite.sweep: see resnet_lite.sweep."""
import contextlib
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path

import torch

from ..cli import ArgumentParser, cli
from ..config import list_presets, resolve_config
from ..data.sources import SPECS
from ..errors import UserError
from ..training.signals import EXIT_PREEMPTED
from . import __doc__ as SWEEP_DOC
from .local import parse_launcher, run_sweep
from .plan import REPORT_PRESETS, plan_runs
from .results import print_results

__all__ = ["main"]

def build_parser() -> ArgumentParser:
    p = ArgumentParser("python -m resnet_lite.sweep", SWEEP_DOC)
    p.add_argument("items", nargs="*", metavar="PRESET_OR_KEY=VALUE",
                   help=f"presets to run (default: {' '.join(REPORT_PRESETS)}; all: {' '.join(list_presets())}) and "
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
    p.add_argument("--launcher", metavar="CMD",
                   help='what runs `-m resnet_lite.train ...`: local (the default: this Python), a command such as '
                        '"accelerate launch --num_processes 2" or "torchrun --nproc_per_node 2", or slurm '
                        '[SBATCH OPTIONS]: one job array of launch/slurm_1node.sbatch, e.g. '
                        '"slurm --gpus-per-node=1 --time=04:00:00"')
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
    presets = [i for i in args.items if "=" not in i] or REPORT_PRESETS
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
