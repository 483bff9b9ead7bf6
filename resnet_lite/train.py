"""Train a lite ResNet (or any timm model) with Accelerate: on a CPU, one GPU, or many GPUs and nodes.

    python -m resnet_lite.train --variant model5                     # one process: the GPU, or the CPU
    accelerate launch -m resnet_lite.train --variant model5          # as `accelerate config` set it up
    accelerate launch --config_file launch/multi_gpu.yaml --num_processes 4 -m resnet_lite.train --variant model5
    torchrun --standalone --nproc_per_node 4 -m resnet_lite.train --variant model5
    ACCELERATE_USE_CPU=true torchrun --standalone --nproc_per_node 2 -m resnet_lite.train --data synthetic --epochs 2
    python -m resnet_lite.train --variant model5 --data synthetic --epochs 3 optim.lr=0.02 schedule.name=onecycle
    python -m resnet_lite.train --output-dir runs/m5 --resume        # continue runs/m5 from its newest checkpoint, or start it
    python -m resnet_lite.train --list                               # the presets

--batch-size is GLOBAL: images per optimizer step over all processes; with N processes each takes batch_size / N
(and splits that into grad_accum micro-batches). The learning rate is used as given, whatever the batch size.

A run directory (--output-dir, default runs/<preset or model>-<YYYYmmdd-HHMMSS>) holds config.yaml (resolved),
metrics.jsonl (a JSON line per epoch), summary.json, model_best.safetensors and model_last.safetensors (the plain
model's weights, with model name, classes and mean/std as metadata), curves.png, checkpoints/ (resnet_lite.checkpoint)
and, with W&B on, wandb/.

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

Test hooks (environment): RESNET_LITE_RANK_REPORT=DIR has every process write DIR/rank<R>.json at the end or when
stopped by a signal (its data shard, step and a hash of its weights); RESNET_LITE_TEST_CRASH=step:N | save:N | saved:N
kills the process with SIGKILL after optimizer step N, inside the write of checkpoint N, or just after it
(resnet_lite.signals.crash_point). The tests use them to check what each process saw and to crash runs anywhere.
"""
import dataclasses
import hashlib
import itertools
import json
import os
import platform
import secrets
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import broadcast_object_list, gather_object, set_seed

from . import __version__
from .augment import build_augment, build_normalize
from .checkpoint import (CHECKPOINT_DIR, list_checkpoints, load_checkpoint, resumable_checkpoint, rng_state,
                         save_checkpoint, save_weights, set_rng_state)
from .config import TrainConfig, list_presets, resolve_config, settings_help, to_dict, to_yaml
from .data import SPECS, DeviceLoader, load_data
from .ema import TTA, build_ema, update_ema
from .errors import ArgumentParser, UserError, cli
from .loggers import (Progress, log_wandb_final, plot_curves, print_final, read_metrics, wandb_mode, write_json,
                      write_metrics, write_yaml)
from .models import SEED_TABLE, count_params, create_model
from .optim import build_optimizer, build_scheduler
from .signals import (EXIT_NONFINITE, EXIT_PREEMPTED, NonFiniteLoss, Preempted, StopCheck, crash_point,
                      stop_signals)

__all__ = ["train", "evaluate", "main"]

CURVES_EVERY = 300.0  # seconds between redraws of curves.png during a run (always drawn at the end)
WANDB_SAMPLES = 32  # test images in the W&B table of sample predictions


def resolve_mixed_precision(setting: str) -> str:
    """'auto': fp16/bf16 when the launcher asks for one (accelerate launch --mixed_precision, or its config file),
    else bf16 on a CUDA GPU that has it, else no. (`accelerate launch` without a config says "no" by default.)"""
    if setting != "auto":
        return setting
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
    if launcher in ("fp16", "bf16"):
        return launcher
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return "bf16" if not use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _run_dir(cfg: TrainConfig, accelerator: Accelerator) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    name = [None]
    if accelerator.is_main_process:  # one clock decides, or ranks straddling a second would disagree
        base = f"runs/{cfg.name or cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        name[0] = next(p for i in itertools.count() if not Path(p := base if i == 0 else f"{base}-{i}").exists())
    if accelerator.num_processes > 1:
        broadcast_object_list(name)
    return Path(name[0])


def _step_seed(seed: int, rank: int, step: int) -> int:
    """Augmentation seed of one rank's batch: runs and resumes repeat it without saving generator states."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{rank}/{step}".encode(), digest_size=8).digest(), "little") >> 1


def _average_bn_stats(model: torch.nn.Module, accelerator: Accelerator) -> None:
    """Average BatchNorm running statistics over processes (timm's distribute_bn 'reduce'), so every process
    evaluates, and saves, the same model."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.running_mean.copy_(accelerator.reduce(m.running_mean, "mean"))
            m.running_var.copy_(accelerator.reduce(m.running_var, "mean"))


@torch.no_grad()
def evaluate(model, loader: DeviceLoader, normalize, num_classes: int, accelerator: Accelerator,
             channels_last: bool = False) -> dict:
    """Test loss (plain cross-entropy), accuracy and the confusion matrix, every image counted once over all ranks.

    `model` must not run collectives in forward (the plain model, not DDP): ranks can hold one batch more or less."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=accelerator.device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=accelerator.device)
    for images, labels in loader:
        x = normalize(images)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        confusion += torch.bincount(labels * num_classes + logits.argmax(1), minlength=num_classes**2)
    model.train(was_training)
    loss_sum, confusion = accelerator.reduce(loss_sum), accelerator.reduce(confusion).view(num_classes, num_classes)
    count = int(confusion.sum())
    return {"loss": loss_sum.item() / count, "acc": confusion.diag().sum().item() / count, "samples": count,
            "per_class": (confusion.diag().double() / confusion.sum(1).clamp_min(1)).tolist(), "confusion": confusion.cpu()}


def _versions() -> dict:
    import accelerate
    import timm

    return {"resnet_lite": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux: the CPU's marketing name
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or device.type


def _buffers(module) -> dict | None:
    return None if module is None else {k: v.detach().cpu().clone() for k, v in module.named_buffers()}


def _state_hash(state_dict: dict) -> str:
    h = hashlib.sha256()
    for k, v in state_dict.items():
        h.update(k.encode())
        h.update(v.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def train(cfg: TrainConfig, resume=None) -> dict:
    """Train as `cfg` says, continuing from the checkpoint file `resume` when given. Returns the summary.

    Raises Preempted after a stop signal (a checkpoint was saved: resume it) and NonFiniteLoss (nothing was saved after
    the last good checkpoint); both end every process at the same step."""
    with stop_signals() as stop_flag:
        return _train_with_accelerator(cfg, resume, stop_flag)


def _train_with_accelerator(cfg: TrainConfig, resume, stop_flag) -> dict:
    mode, wandb_hint = wandb_mode(cfg.wandb)
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
                              log_with="wandb" if mode != "disabled" else None,
                              # the batch size is global: Accelerate would step a prepared scheduler once per process
                              step_scheduler_with_optimizer=False)
    try:
        return _train(cfg, accelerator, mode, wandb_hint, resume, stop_flag)
    finally:
        accelerator.end_training()
        # let a later train() in this process start over (a sweep), with its own precision
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _check_writable(run_dir: Path) -> None:
    """A one-line error now, before the data is loaded, for a run directory that cannot be created or written."""
    parent = run_dir
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create the run directory {run_dir}: {parent} is a file; choose another --output-dir")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {parent} (permission denied); choose another --output-dir")


def _train(cfg: TrainConfig, accelerator: Accelerator, mode: str, wandb_hint: str | None, resume, stop_flag) -> dict:
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    is_main = accelerator.is_main_process
    state = load_checkpoint(resume) if resume else None
    run_dir = _run_dir(cfg, accelerator)
    cfg = dataclasses.replace(cfg, output_dir=str(run_dir))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and world == 1:  # every process would train the whole set alone and write the same run directory
        raise UserError(f"the launcher started {launched} processes (WORLD_SIZE) but Accelerate sees one; launch with "
                        f"`accelerate launch --multi_gpu` (GPUs) or `--config_file launch/cpu.yaml` (CPU), or torchrun")
    if cfg.sync_bn and world > 1 and device.type == "cpu":
        raise UserError("sync_bn=true needs GPUs (torch's SyncBatchNorm has no CPU kernel); set sync_bn=false")
    with torch.device("meta"):  # an unknown model fails now, not after a download
        create_model(cfg.model)
    if state and state["config"]["model"] != cfg.model:
        raise UserError(f"checkpoint {resume} is of {state['config']['model']}, not {cfg.model}; resume with the run's "
                        f"own model, or start a new run in another --output-dir")
    if state and state["batch"] and state["config"]["batch_size"] != cfg.batch_size:
        raise UserError(f"checkpoint {resume} stopped mid-epoch at batch_size={state['config']['batch_size']}; resume "
                        f"with that batch size (an epoch boundary checkpoint may change it)")
    _check_writable(run_dir)

    set_seed(cfg.seed)
    with accelerator.main_process_first():  # one download, the others then read it
        ds = load_data(cfg.data)
    num_classes, image_size = len(ds.classes), ds.train.images.shape[-1]
    net = create_model(cfg.model, num_classes=num_classes, in_chans=3, drop_rate=cfg.drop_rate)
    params = count_params(net)
    if state and state.get("classes", ds.classes) != ds.classes:
        raise UserError(f"checkpoint {resume} was trained on {len(state['classes'])} classes, the data "
                        f"{cfg.data.spec} has {len(ds.classes)} ({', '.join(ds.classes[:5])}...); resume with the run's "
                        f"own data, or start a new run in another --output-dir")
    if state:
        try:
            net.load_state_dict(state["model"])
        except RuntimeError as e:
            raise UserError(f"checkpoint {resume} does not fit {cfg.model} with {num_classes} classes "
                            f"({str(e).splitlines()[0]}); resume with the run's own model and data") from None
    if cfg.sync_bn and world > 1:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net = net.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    ema = build_ema(cfg.ema, net)
    if ema is not None and state and state.get("ema") is not None:
        ema.module.load_state_dict(state["ema"])
    evaluated_net = ema.module if ema is not None else net  # what is evaluated and saved
    try:  # only now: a mistake in the data or model settings leaves no empty run directory behind
        (run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run directory {run_dir} ({e.strerror}); choose another --output-dir") from None

    train_loader = DeviceLoader(ds.train, cfg.batch_size, device=device, train=True, rank=rank, world_size=world,
                                seed=cfg.seed, drop_last=cfg.drop_last)
    test_loader = DeviceLoader(ds.test, cfg.eval_batch_size, device=device, train=False, rank=rank, world_size=world)
    val_loader = None if ds.val is None else DeviceLoader(ds.val, cfg.eval_batch_size, device=device, train=False,
                                                          rank=rank, world_size=world)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise UserError(f"{len(ds.train)} training images make no batch of {cfg.batch_size}; lower --batch-size")
    optimizer = build_optimizer(net, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, steps_per_epoch, cfg.epochs)
    model, optimizer = accelerator.prepare(net, optimizer)  # not the loaders: they shard themselves
    # prepare() wraps net.forward in a new autocast object per run, and torch.compile guards on that object's identity,
    # so every later train() in a process recompiled (a sweep, benchmarks/time_to_accuracy.py); autocast in the loop
    net.__dict__.pop("forward", None)
    train_model = torch.compile(model) if cfg.compile else model
    # plain module: no collective in forward
    eval_model = TTA(torch.compile(evaluated_net) if cfg.compile else evaluated_net, cfg.tta)
    augment = build_augment(cfg.augment, ds.mean, ds.std)
    normalize = build_normalize(ds.mean, ds.std)
    generator = torch.Generator(device=device)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="sum")

    epoch0, batch0, step, elapsed = 0, 0, 0, 0.0
    best, rows, loss0, seen0 = {"acc": -1.0, "epoch": 0}, [], 0.0, 0
    best_val = {"acc": -1.0, "epoch": 0, "test_acc": None}  # model selection on the held-out split, when there is one
    wandb_id, best_step = None, None
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and state["scaler"] is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
        epoch0, batch0, step, elapsed = state["epoch"], state["batch"], state["step"], state["elapsed"]
        best, loss0, seen0, wandb_id = state["best"], state["train_loss_sum"], state["train_images"], state["wandb_id"]
        best_val, best_step = state.get("best_val") or best_val, state.get("best_step")
        own = state["ranks"][rank] if len(state.get("ranks") or ()) == world else None  # else the main process's
        if own:
            loss0, seen0 = own["train_loss_sum"], own["train_images"]
            for module, buffers in zip((net, ema.module if ema is not None else None), own["buffers"]):
                for name, buffer in module.named_buffers() if module is not None else ():
                    buffer.copy_(buffers[name])
        set_rng_state(own["rng"] if own else state["rng"])
        rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["epoch"] <= epoch0]

    progress = Progress(is_main, cfg.epochs, steps_per_epoch)
    meta = {"model": cfg.model, "num_classes": num_classes, "in_chans": 3, "image_size": image_size,
            "classes": ds.classes, "mean": list(ds.mean), "std": list(ds.std), "ema": cfg.ema.enabled}
    if is_main:
        write_yaml(to_dict(cfg), run_dir / "config.yaml")
        write_metrics(rows, run_dir / "metrics.jsonl")
        where = f"resuming {resume} at epoch {epoch0 + 1} step {step}" if state else "starting"
        progress.print(f"{cfg.model} ({params:,} params) on {world} x {_device_name(device)}, "
                       f"mixed precision {accelerator.mixed_precision}; {ds.name}: {len(ds.train)} train / "
                       f"{len(ds.test)} test images; global batch {cfg.batch_size}, {steps_per_epoch} steps per "
                       f"epoch; {where}; run directory {run_dir}")
        if wandb_hint:
            progress.print(wandb_hint)
    if mode != "disabled":
        wandb_id = wandb_id or secrets.token_hex(4)  # kept in checkpoints: a resumed run continues this W&B run
        accelerator.init_trackers(cfg.wandb_project, config=to_dict(cfg), init_kwargs={"wandb": {
            "dir": str(run_dir), "mode": mode, "name": run_dir.name, "id": wandb_id, "resume": "allow"}})

    def checkpoint(epoch, batch, loss_sum, seen):
        # each process's own partial-epoch loss, generators and BatchNorm statistics (they differ until the epoch's
        # end reduces them), so a resume on as many processes continues every one of them exactly
        mine = {"train_loss_sum": float(loss_sum), "train_images": seen, "rng": rng_state(),
                "buffers": [_buffers(m) for m in (net, ema.module if ema is not None else None)]}
        ranks = gather_object([mine]) if world > 1 else [mine]
        if is_main:
            return save_checkpoint({
                "model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "epoch": epoch, "batch": batch, "step": step, "config": to_dict(cfg), "rng": rng_state(),
                "train_loss_sum": float(loss_sum), "train_images": seen, "best": dict(best),
                "elapsed": elapsed + time.perf_counter() - t_start, "world_size": world, "wandb_id": wandb_id,
                "ema": ema.module.state_dict() if ema is not None else None, "best_val": dict(best_val),
                "best_step": best_step, "classes": list(ds.classes), "ranks": ranks,
            }, run_dir / CHECKPOINT_DIR, cfg.keep_checkpoints, best_step)

    def rank_report(**extra):
        if os.environ.get("RESNET_LITE_RANK_REPORT"):
            report = Path(os.environ["RESNET_LITE_RANK_REPORT"])
            report.mkdir(parents=True, exist_ok=True)
            (report / f"rank{rank}.json").write_text(json.dumps({
                "rank": rank, "world_size": world, "step": step, "state_sha256": _state_hash(net.state_dict()),
                "train_indices_first_epoch": first_indices.tolist() if first_indices is not None else [],
                "test_indices": test_loader.local_indices().tolist(), "test_samples": test_loader.num_samples, **extra}))

    def stop_run(stop, saved):
        """Every process: raise what main() turns into the exit code, once the main process has saved `saved`."""
        check.close()
        progress.close()
        if stop.diverged:
            good = list_checkpoints(run_dir / CHECKPOINT_DIR)
            raise NonFiniteLoss(f"{stop.what} at step {stop.step} (epoch {epoch + 1}, lr {stop.lr:.3g}); stopped "
                                f"without saving it: {f'the last good checkpoint is {good[-1]}' if good else 'no checkpoint yet'}"
                                f"; lower optim.lr (or raise schedule.warmup_epochs), then resume with --resume")
        rank_report(stopped=stop.signal_name)
        accelerator.wait_for_everyone()  # no process exits (a launcher then kills the rest) before the checkpoint is whole
        other = "" if stop_flag.signum else " on another process"
        raise Preempted(f"stopped by {stop.signal_name}{other} after step {step} (epoch {epoch + 1}); saved {saved}; "
                        f"continue with: python -m resnet_lite.train --output-dir {run_dir} --resume")

    check = StopCheck(stop_flag, device, world)

    result, last_curves, first_indices = None, time.perf_counter(), None
    t_start = time.perf_counter()
    for epoch in range(epoch0, cfg.epochs):
        train_loader.set_epoch(epoch)
        first_indices = first_indices if first_indices is not None else train_loader.local_indices()
        skip = batch0 if epoch == epoch0 else 0
        loss_sum = torch.full((), loss0 if skip else 0.0, device=device)
        seen = seen0 if skip else 0  # this rank's images in this epoch
        progress.start_epoch(epoch + 1, skip)
        t_epoch, epoch_images = time.perf_counter(), 0
        train_model.train()
        for batch, (images, labels) in enumerate(itertools.islice(train_loader, skip, None), start=skip):
            generator.manual_seed(_step_seed(cfg.seed, rank, step))
            x = augment(images, generator)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            n = len(labels)
            chunks = min(cfg.grad_accum, n)
            for i, (xc, yc) in enumerate(zip(x.tensor_split(chunks), labels.tensor_split(chunks))):
                # gradients are all-reduced once per optimizer step, on the last micro-batch
                with nullcontext() if i == chunks - 1 else accelerator.no_sync(train_model):
                    with accelerator.autocast():
                        logits = train_model(xc)
                    loss = criterion(logits.float(), yc) / n  # sums to the mean over this rank's batch
                    accelerator.backward(loss)
                loss_sum += loss.detach() * n
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            update_ema(ema, net, cfg.ema, step)
            seen += n
            epoch_images += n * world
            progress.update(n * world, lambda: (loss_sum / seen).item(), lr)
            crash_point("step", step)
            last = batch + 1 == steps_per_epoch
            due = bool(cfg.checkpoint_every_steps) and step % cfg.checkpoint_every_steps == 0 and not last
            # the same answer on every process; a signal in an epoch's last step is answered after its evaluation
            stop = check(step, lr, loss_sum, net, wait=due or last)
            if stop and stop.diverged:
                stop_run(stop, None)
            if due or (stop and not last):
                saved = checkpoint(epoch, batch + 1, loss_sum, seen)
                if stop:
                    stop_run(stop, saved)

        totals = accelerator.reduce(torch.stack([loss_sum, torch.tensor(float(seen), device=device)]))
        train_loss = (totals[0] / totals[1]).item()
        train_seconds = time.perf_counter() - t_epoch
        evaluated = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        if evaluated:
            if world > 1 and not cfg.sync_bn:
                _average_bn_stats(evaluated_net, accelerator)
            result = evaluate(eval_model, test_loader, normalize, num_classes, accelerator, cfg.channels_last)
            if val_loader is not None:
                val_result = evaluate(eval_model, val_loader, normalize, num_classes, accelerator, cfg.channels_last)
        row = {"epoch": epoch + 1, "step": step, "train_loss": train_loss,
               "test_loss": result["loss"] if evaluated else None, "test_acc": result["acc"] if evaluated else None,
               "lr": lr, "epoch_seconds": time.perf_counter() - t_epoch,
               "images_per_second": epoch_images / max(train_seconds, 1e-9)}
        if val_loader is not None:
            row.update(val_loss=val_result["loss"] if evaluated else None, val_acc=val_result["acc"] if evaluated else None)
        rows.append(row)
        improved = evaluated and row["test_acc"] > best["acc"]  # the same on every rank: the metrics are reduced
        if improved:
            best = {"acc": row["test_acc"], "epoch": epoch + 1}
        selected = improved if val_loader is None else evaluated and row["val_acc"] > best_val["acc"]
        if selected and val_loader is not None:
            best_val = {"acc": row["val_acc"], "epoch": epoch + 1, "test_acc": row["test_acc"]}
        if selected:
            best_step = step  # this epoch's checkpoint is kept as the best
        if is_main:
            write_metrics(rows, run_dir / "metrics.jsonl")
            if selected:
                save_weights(evaluated_net.state_dict(), run_dir / "model_best.safetensors", dict(meta, epoch=epoch + 1))
            if time.perf_counter() - last_curves > CURVES_EVERY:
                plot_curves(rows, run_dir / "curves.png", run_dir.name)
                last_curves = time.perf_counter()
        saved = checkpoint(epoch + 1, 0, 0.0, 0)
        accelerator.log({k: v for k, v in row.items() if v is not None}, step=step)
        progress.end_epoch(row)
        if epoch + 1 < cfg.epochs and (stop := check(step, lr, loss_sum, wait=True)):  # signals during the evaluation
            stop_run(stop, saved)
    check.close()
    progress.close()
    elapsed += time.perf_counter() - t_start

    if result is None:  # nothing left to train (a finished run resumed): evaluate for the summary
        result = evaluate(eval_model, test_loader, normalize, num_classes, accelerator, cfg.channels_last)
    devices = gather_object([_device_name(device)])
    summary = {
        "model": cfg.model, "run_dir": str(run_dir), "dataset": ds.name, "epochs": cfg.epochs, "steps": step,
        "best_test_acc": best["acc"], "best_epoch": best["epoch"], "final_test_acc": result["acc"],
        "final_test_loss": result["loss"], "per_class_acc": dict(zip(ds.classes, result["per_class"])),
        "params": params, "world_size": world, "eval_samples": result["samples"], "total_seconds": elapsed,
        "mixed_precision": accelerator.mixed_precision, "devices": devices, "versions": _versions(),
        "ema": cfg.ema.enabled, "tta": cfg.tta,
    }
    if val_loader is not None:  # model_best.safetensors is the best epoch on the held-out split, not on the test set
        last_val = next((r["val_acc"] for r in reversed(rows) if r.get("val_acc") is not None), None)
        summary.update(final_val_acc=last_val, best_val_acc=best_val["acc"], best_val_epoch=best_val["epoch"],
                       test_acc_at_best_val=best_val["test_acc"])
    rank_report()
    if is_main:
        save_weights(evaluated_net.state_dict(), run_dir / "model_last.safetensors", dict(meta, epoch=len(rows)))
        write_json(summary, run_dir / "summary.json")
        plot_curves(rows, run_dir / "curves.png", run_dir.name)
        if mode != "disabled":
            samples = []
            images, labels = ds.test.images[:WANDB_SAMPLES], ds.test.labels[:WANDB_SAMPLES]
            with torch.no_grad(), accelerator.autocast():
                net.eval()
                probs = net(normalize(images.to(device))).float().softmax(1).cpu()
            for image, label, p in zip(images, labels.tolist(), probs):
                samples.append((image, label, int(p.argmax()), float(p.max())))
            log_wandb_final(accelerator.get_tracker("wandb", unwrap=True), run_dir / "curves.png",
                            result["confusion"], ds.classes, samples)
        print_final(summary, ds.classes)
    return summary


# ---------------------------------------------------------------------------------------------- command line


def build_parser() -> ArgumentParser:
    p = ArgumentParser("python -m resnet_lite.train",
                       description="Train a lite ResNet with Accelerate (also: accelerate launch / torchrun -m resnet_lite.train).",
                       epilog=f"presets (--variant): {', '.join(list_presets())}; `--list` describes them.\n"
                              "Precedence: defaults < --variant < --config < flags < KEY=VALUE overrides; "
                              "--print-config shows the result.\n\n" + settings_help())
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="any setting as a dotted override, e.g. optim.weight_decay=5e-4 schedule.name=onecycle")
    p.add_argument("--variant", metavar="PRESET", help="a preset from configs/ (model0..model8: the seed's Table 1)")
    p.add_argument("--config", metavar="FILE", help="a YAML file of settings")
    p.add_argument("--data", metavar="SPEC", help=f"dataset: {SPECS} (default cifar10)")
    p.add_argument("--data-dir", metavar="DIR", help="where datasets are downloaded and cached (data.root)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="GLOBAL images per optimizer step, over all processes")
    p.add_argument("--lr", type=float, help="peak learning rate (optim.lr), used as given")
    p.add_argument("--seed", type=int)
    p.add_argument("--output-dir", metavar="DIR", help="run directory (default runs/<preset>-<time>)")
    p.add_argument("--wandb", choices=["online", "offline", "disabled"], help="W&B logging (default: online if logged in)")
    p.add_argument("--resume", nargs="?", const=True, metavar="RUN_DIR_OR_CHECKPOINT",
                   help="continue a run with its own config, changed only by the flags and overrides given with it; "
                        "without a value: the newest checkpoint in --output-dir, or a fresh start if there is none")
    p.add_argument("--list", action="store_true", help="print the presets as a table and exit")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved settings as YAML (what the run's config.yaml holds) and exit without training")
    return p


def print_presets() -> None:
    from rich.console import Console
    from rich.table import Table

    seed_acc = {f"model{r['model']}": r["acc"] for r in SEED_TABLE}
    table = Table(title="presets: python -m resnet_lite.train --variant NAME")
    for col in ("preset", "variant", "params", "batch", "optimizer", "lr", "epochs", "schedule", "seed acc %"):
        table.add_column(col, justify="left" if col in ("preset", "variant", "optimizer", "schedule") else "right")
    params = {}
    for name in list_presets():
        cfg = resolve_config(name)
        if cfg.model not in params:
            with torch.device("meta"):
                params[cfg.model] = count_params(create_model(cfg.model))
        table.add_row(name, cfg.model, f"{params[cfg.model]:,}", f"{cfg.batch_size}/{cfg.eval_batch_size}",
                      cfg.optim.name, f"{cfg.optim.lr:g}", str(cfg.epochs), cfg.schedule.name,
                      f"{seed_acc[name]:.2f}" if name in seed_acc else "-")
    Console(width=None if sys.stdout.isatty() else 120).print(table)


def _run_of(checkpoint: Path) -> Path:
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINT_DIR else checkpoint.parent


@cli
def main(argv=None):
    args = build_parser().parse_intermixed_args(argv)  # overrides may come before and after flags
    if args.list:
        print_presets()
        return 0
    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).exists():
        args.overrides.insert(0, args.resume)  # `--resume optim.lr=0.1`: argparse took the override for the path
        args.resume = True
    flags = {"data.spec": args.data, "data.root": args.data_dir, "epochs": args.epochs, "batch_size": args.batch_size,
             "optim.lr": args.lr, "seed": args.seed, "output_dir": args.output_dir, "wandb": args.wandb}
    cfg = resolve_config(args.variant, args.config, flags, args.overrides)
    found = None
    if args.resume is True:
        if cfg.output_dir is None:
            raise UserError("--resume without a path continues the run in --output-dir; give --output-dir DIR or --resume DIR")
        found = resumable_checkpoint(cfg.output_dir, warn=_print_main)
    elif args.resume:
        found = resumable_checkpoint(args.resume, warn=_print_main)
        if found is None:
            raise UserError(f"no checkpoint at {args.resume}; give a run directory with checkpoints/ or a .pt file")
    checkpoint = found[0] if found else None
    if found:  # the run's own config, changed only by what this command line sets explicitly
        flags["output_dir"] = args.output_dir or str(_run_of(checkpoint))
        cfg = resolve_config(base=found[1]["config"], flags=flags, overrides=args.overrides)
    elif args.resume and not args.print_config:
        _print_main(f"no checkpoint in {cfg.output_dir} yet: starting a new run", file=sys.stdout)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    try:
        train(cfg, resume=checkpoint)
    except Preempted as e:
        _print_main(str(e))
        sys.exit(EXIT_PREEMPTED)
    except NonFiniteLoss as e:
        _print_main(f"error: {e}")
        sys.exit(EXIT_NONFINITE)
    return 0


def _print_main(text: str, file=None) -> None:
    if int(os.environ.get("RANK", "0")) == 0:  # one copy in a multi-process log
        print(text, file=file or sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
