"""Train a lite ResNet (or any timm model) with Accelerate: on a CPU, one GPU, or many GPUs and nodes.

    python -m resnet_lite.train --variant model5                     # one process: the GPU, or the CPU
    accelerate launch -m resnet_lite.train --variant model5          # as `accelerate config` set it up
    accelerate launch --config_file launch/multi_gpu.yaml --num_processes 4 -m resnet_lite.train --variant model5
    torchrun --standalone --nproc_per_node 4 -m resnet_lite.train --variant model5
    ACCELERATE_USE_CPU=true torchrun --standalone --nproc_per_node 2 -m resnet_lite.train --data synthetic --epochs 2
    python -m resnet_lite.train --variant model5 --data synthetic --epochs 3 optim.lr=0.02 schedule.name=onecycle
    python -m resnet_lite.train --variant model5 --optim.lr=0.02 --schedule.name onecycle --ema.enabled  # as flags
    python -m resnet_lite.train --output-dir runs/m5 --resume        # continue runs/m5 from its newest checkpoint,
                                                                     # or start it
    python -m resnet_lite.train --model resnet18 --pretrained --data imagefolder:PATH data.image_size=224 --lr 1e-3
    python -m resnet_lite.train --initial-checkpoint runs/m5 --data cifar100 optim.freeze_epochs=1   # fine-tune a run
    python -m resnet_lite.train --list                               # the presets
    python -m resnet_lite.train --variant fast --profile 10          # a torch.profiler trace of 10 steps: <run>/profile

--batch-size is GLOBAL: images per optimizer step over all processes; with N processes each takes batch_size / N
(and splits that into grad_accum micro-batches). The learning rate is used as given, whatever the batch size.

A run directory (--output-dir, default runs/<preset or model>-<YYYYmmdd-HHMMSS>) holds config.yaml (resolved),
metrics.jsonl (a JSON line per epoch), summary.json, model_best.safetensors and model_last.safetensors (the plain
model's weights, with model name, classes and mean/std as metadata), curves.png, checkpoints/
(resnet_lite.outputs.checkpoint) and, with W&B on, wandb/ (resnet_lite.outputs.rundir owns the layout and the rules). A
directory that already holds a run is an error unless --resume continues it or --overwrite replaces it; the main process
holds the folder's lock for the whole run, so a second trainer there is an error too; config.yaml leaves output_dir
null, so `--config runs/x/config.yaml` starts a new run elsewhere.

Stopping and resuming: SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 (Slurm's warning) lets the current step finish, saves a
checkpoint and exits 75; all processes stop after the same step. A second signal ends the process at once. `--resume`
restores everything (weights, optimizer, schedule, scaler, EMA, RNG states, data order, partial-epoch metrics), so the
finished run's weights are bitwise those of an uninterrupted run on the CPU and metrics.jsonl reads as one run; an
unreadable newest checkpoint is skipped with a warning. Under torchrun, which passes a signal it receives on to the
workers, signal the workers themselves (or set TORCHELASTIC_SIGNALS_TO_HANDLE=SIGHUP,SIGQUIT, as launch/ does), or the
launcher's copy is a second signal.

Exit codes:
    0   finished (or --list / --help)
    2   a user error: bad setting, data, checkpoint or output directory; one line `error: ...` says what to do
    3   the loss became inf or nan: nothing saved after the last good checkpoint (lower optim.lr, then --resume)
    75  stopped by a signal after saving a checkpoint (EX_TEMPFAIL): run the same command with --resume
    128 + N (shell) / -N (subprocess): killed by signal N, e.g. a second signal

The run itself is resnet_lite.training.trainer.Trainer; its loops are in resnet_lite.training.engine. Test hooks:
resnet_lite.hooks.
"""
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

from .cli import ArgumentParser, cli
from .config import TrainConfig, list_presets, resolve_config, settings_argv, settings_help, to_yaml
from .data.sources import SPECS
from .errors import UserError
from .models.lite import create_model
from .models.tools import count_params
from .outputs import rundir
from .outputs.checkpoint import load_checkpoint, resumable_checkpoint
from .outputs.console import console, counted
from .outputs.sweep_agent import agent_run
from .report import REPORT_TABLE
from .training.distributed import accelerator_session, agree, resolve_mixed_precision
from .training.signals import EXIT_NONFINITE, EXIT_PREEMPTED, NonFiniteLoss, Preempted, stop_signals, stop_with_parent
from .training.trainer import Trainer, check_inputs

__all__ = ["train", "main"]


def train(cfg: TrainConfig, resume=None, overwrite: bool = False) -> dict:
    """Train as `cfg` says; returns the summary. resume: a checkpoint file to continue, or True: cfg.output_dir's
    newest checkpoint, else a new run there if that loses nothing (resnet_lite.outputs.rundir's rules); overwrite:
    replace the run cfg.output_dir holds (its run files are removed once the inputs are checked).

    The main process holds the run directory's lock for the whole run: a second trainer there gets a UserError.
    Raises Preempted after a stop signal (a checkpoint was saved: resume it) and NonFiniteLoss (nothing was saved after
    the last good checkpoint); both end every process at the same step."""
    if resume is True:
        if cfg.output_dir is None:
            raise UserError("resume=True continues the run in output_dir; set output_dir")
        found = resumable_checkpoint(cfg.output_dir, warn=_print_main)
        resume = found[0] if found else None
        intent = "resume"
    else:
        resume = resume or None
        intent = "resume" if resume else "overwrite" if overwrite else "new"
    if resume and overwrite:
        raise UserError(f"--resume continues {resume} but --overwrite would start its run again; give one of them")
    error = None
    try:  # before the processes connect; under a launcher they stop together once connected (agree)
        check_inputs(cfg, load_checkpoint(resume) if resume else None, resume)
    except UserError as e:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            raise
        error = str(e)
    with stop_signals() as stop_flag, accelerator_session(
            mixed_precision=resolve_mixed_precision(cfg.mixed_precision),  # the Reporter starts the trackers
            # the batch size is global: Accelerate would step a prepared scheduler once per process
            step_scheduler_with_optimizer=False,
            kwargs_handlers=[cfg.ddp.kwargs_handler(cfg.grad_accum)]) as accelerator:
        agree(accelerator, error)
        with rundir.claimed(cfg.output_dir, cfg.name or cfg.model, accelerator, intent, resume) as run_dir:
            if intent == "resume" and resume is None:
                _print_main(f"no checkpoint in {run_dir} yet: starting a new run", file=sys.stdout)
            return Trainer(cfg, accelerator, run_dir, resume, stop_flag, overwrite=overwrite).fit()


# ---------------------------------------------------------------------------------------------- command line


def build_parser() -> ArgumentParser:
    p = ArgumentParser("python -m resnet_lite.train",
                       description="Train a lite ResNet with Accelerate "
                                   "(also: accelerate launch / torchrun -m resnet_lite.train).",
                       epilog=f"presets (--variant): {', '.join(list_presets())}; `--list` describes them.\n"
                              "Precedence: defaults < --variant < --config < flags < KEY=VALUE overrides; "
                              "--print-config shows the result.\n\n" + settings_help())
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="any setting as a dotted override, e.g. optim.weight_decay=5e-4 schedule.name=onecycle")
    p.add_argument("--variant", metavar="PRESET",
                   help="a preset from configs/ (model0..model8: the report's Table 1; fast, fast94: speed runs)")
    p.add_argument("--model", metavar="NAME", help="the network (model): a lite model or any timm model, e.g. resnet18")
    p.add_argument("--pretrained", action="store_true", default=None,
                   help="start from the model's published weights through timm (pretrained=true)")
    p.add_argument("--pretrained-path", metavar="FILE",
                   help="a local weights file timm loads in place of the published ones "
                        "(pretrained_path; implies --pretrained)")
    p.add_argument("--initial-checkpoint", metavar="PATH",
                   help="start from these weights: a .safetensors/.pth file or a run directory (initial_checkpoint)")
    p.add_argument("--config", metavar="FILE", help="a YAML file of settings")
    p.add_argument("--data", metavar="SPEC", help=f"dataset: {SPECS} (default cifar10)")
    p.add_argument("--data-dir", metavar="DIR", help="where datasets are downloaded and cached (data.root)")
    p.add_argument("--epochs", type=int, metavar="N",
                   help="passes over the training split (epochs; the preset's, else 70). A run shorter than its preset "
                        "planned keeps a whole schedule: the warm-up takes at most a quarter of it "
                        "(schedule.warmup_max_fraction), and the console says so")
    p.add_argument("--batch-size", type=int, metavar="N", help="GLOBAL images per optimizer step, over all processes")
    p.add_argument("--lr", type=float, help="peak learning rate (optim.lr), used as given")
    p.add_argument("--seed", type=int, metavar="N",
                   help="the random seed of the weights, the data order and the augmentation (seed; default 0)")
    p.add_argument("--output-dir", metavar="DIR", help="run directory (default runs/<preset>-<time>)")
    p.add_argument("--profile", type=int, metavar="N", help="record N training steps with torch.profiler after a "
                                                           "warm-up: a trace per process in <run>/profile (profile)")
    p.add_argument("--log-with", metavar="NAMES", help="experiment trackers, comma-separated, e.g. tensorboard,wandb "
                                                     "(log_with; default wandb)")
    p.add_argument("--wandb", choices=["online", "offline", "disabled"], metavar="MODE",
                   help="W&B logging: online, offline or disabled (wandb.mode; default: online if logged in)")
    p.add_argument("--resume", nargs="?", const=True, metavar="RUN_DIR_OR_CHECKPOINT",
                   help="continue a run with its own config, changed only by the flags and overrides given with it; "
                        "without a value: the newest checkpoint in --output-dir, or a fresh start if there is none")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --output-dir that holds one, removing that run's files (without it, "
                        "such a directory is an error: continue it with --resume or choose another)")
    p.add_argument("--list", action="store_true", help="print the presets as a table and exit")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved settings as YAML and exit without training: what the run's config.yaml "
                        "would hold, with output_dir the folder the run would go to (config.yaml leaves it null)")
    return p


def print_presets() -> None:
    from rich.table import Table

    report_acc = {f"model{r['model']}": r["acc"] for r in REPORT_TABLE}
    table = Table(title="presets: python -m resnet_lite.train --variant PRESET")
    columns = ("preset", "model", "params", "batch", "eval batch", "optimizer", "lr", "epochs", "schedule",
               "report acc %")
    for col in columns:
        table.add_column(col, justify="left" if col in ("preset", "model", "optimizer", "schedule") else "right")
    params = {}
    for name in list_presets():
        cfg = resolve_config(name)
        if cfg.model not in params:
            with torch.device("meta"):
                params[cfg.model] = count_params(create_model(cfg.model))
        table.add_row(name, cfg.model, f"{params[cfg.model]:,}", str(cfg.batch_size), str(cfg.eval_batch_size),
                      cfg.optim.name, f"{cfg.optim.lr:g}", str(cfg.epochs), cfg.schedule.name,
                      f"{report_acc[name]:.2f}" if name in report_acc else "-")
    console().print(table)
    print("model: the network the preset trains (--model); report acc %: the accuracy the report's Table 1 gives for "
          "it, after 70 epochs on CIFAR-10")


@cli
def main(argv=None):
    parser = build_parser()
    argv = settings_argv(sys.argv[1:] if argv is None else argv, options=set(parser._option_string_actions))
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after flags
    if args.list:
        print_presets()
        return 0
    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).exists():
        args.overrides.insert(0, args.resume)  # `--resume optim.lr=0.1`: argparse took the override for the path
        args.resume = True
    flags = {"model": args.model, "pretrained": True if args.pretrained or args.pretrained_path else None,
             "pretrained_path": args.pretrained_path, "initial_checkpoint": args.initial_checkpoint,
             "data.spec": args.data, "data.root": args.data_dir, "epochs": args.epochs, "batch_size": args.batch_size,
             "optim.lr": args.lr, "seed": args.seed, "output_dir": args.output_dir, "wandb.mode": args.wandb,
             "log_with": args.log_with, "profile": args.profile}
    cfg = resolve_config(args.variant, args.config, flags, args.overrides)
    agent = agent_run()  # started by `wandb agent`: its run's folder unless one is given
    if agent and cfg.output_dir is None:
        cfg = dataclasses.replace(cfg, output_dir=str(agent.run_dir))
    found = None
    if args.resume is True:
        if cfg.output_dir is None:
            raise UserError("--resume without a path continues the run in --output-dir; "
                            "give --output-dir DIR or --resume DIR")
        found = resumable_checkpoint(cfg.output_dir, warn=_print_main)
    elif args.resume:
        found = resumable_checkpoint(args.resume, warn=_print_main)
        if found is None:
            raise UserError(f"no checkpoint at {args.resume}; give a run directory with checkpoints/ or a .pt file")
    if found and args.overwrite:
        raise UserError(f"--resume continues {found[0]} but --overwrite would start its run again; give one of them")
    if found:  # the run's own config, changed only by what this command line sets explicitly
        run_model = found[1]["config"]["model"]
        if (args.variant or args.config) and cfg.model != run_model:
            source = f"--variant {args.variant}" if args.variant else f"--config {args.config}"
            raise UserError(f"{source} trains {cfg.model} but the run resumed from {found[0]} trains {run_model}; "
                            f"resume without it (the run keeps its own config), "
                            f"or start a new run in another --output-dir")
        flags["output_dir"] = args.output_dir or str(rundir.run_of(found[0]))
        cfg = resolve_config(base=found[1]["config"], flags=flags, overrides=args.overrides)
    if agent:
        agent.check(cfg)
    if args.print_config:  # output_dir filled in: where a run started now would go
        print(to_yaml(dataclasses.replace(cfg, output_dir=cfg.output_dir or str(rundir.default_path(
            cfg.name or cfg.model)))), end="")
        return 0
    if found and _is_finished(found, cfg):
        _print_main(_finished(found[1]["epoch"], cfg), file=sys.stdout)  # no W&B run, no table: nothing ran
        return 0
    if agent:  # the agent stops a run by a signal to its launcher: it must reach this process too
        stop_with_parent()
    try:
        train(cfg, resume=found[0] if found else bool(args.resume), overwrite=args.overwrite)
    except Preempted as e:
        _print_main(str(e))
        sys.exit(EXIT_PREEMPTED)
    except NonFiniteLoss as e:
        _print_main(f"error: {e}")
        sys.exit(EXIT_NONFINITE)
    return 0


def _is_finished(found: tuple, cfg: TrainConfig) -> bool:
    """Whether the checkpoint `found` (file, state) ends its own run, which has trained cfg.epochs and written its
    summary (a run stopped after its last checkpoint goes on to write that; another run's folder is refused later)."""
    assert cfg.output_dir is not None  # resuming: the run's folder, from --output-dir or the checkpoint's path
    (path, state), run = found, Path(cfg.output_dir)
    return (state["epoch"] >= cfg.epochs and not state["batch"] and rundir.run_of(path).resolve() == run.resolve()
            and (run / rundir.SUMMARY).is_file())


def _finished(done: int, cfg: TrainConfig) -> str:
    """What --resume of a run that has trained all its epochs says."""
    assert cfg.output_dir is not None  # the finished run's folder (_is_finished)
    summary = Path(cfg.output_dir) / rundir.SUMMARY
    try:
        acc = f", final test accuracy {100 * json.loads(summary.read_text())['final_test_acc']:.2f}%"
    except (OSError, ValueError, KeyError, TypeError):
        acc = ""
    asked = "" if done == cfg.epochs else f" (--epochs {cfg.epochs} asks for no more)"
    return (f"{cfg.output_dir} is finished: {counted(done, 'epoch')} trained{acc}{asked}; nothing to resume. To train "
            f"it longer, resume it with more epochs: "
            f"python -m resnet_lite.train --output-dir {cfg.output_dir} --resume --epochs {2 * done}")


def _print_main(text: str, file=None) -> None:
    if int(os.environ.get("RANK", "0")) == 0:  # one copy in a multi-process log
        print(text, file=file or sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
