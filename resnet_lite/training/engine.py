"""The two loops every run is made of, after timm's train_one_epoch / validate: an epoch of optimizer steps, and an
evaluation pass over a split. The Trainer (resnet_lite.training.trainer) drives them; evaluate and the benchmarks reuse
them.

    with accelerator_session(mixed_precision="bf16") as accelerator:
        ...
        done = train_one_epoch(loop, state, epoch_index, loader, progress, check, save=...)   # done.outcome: finished,
        metrics = evaluate_loader(model, test_loader, normalize, num_classes, accelerator)   # stopped or diverged
"""
import hashlib
import itertools
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from ..data.loader import DeviceLoader
from .signals import Stop
from .state import TrainState

__all__ = ["step_seed", "Loop", "EpochResult", "FINISHED", "STOPPED", "DIVERGED", "train_one_epoch", "evaluate_loader"]


def step_seed(seed: int, rank: int, step: int) -> int:
    """Augmentation seed of one rank's batch: runs and resumes repeat it without saving generator states."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{rank}/{step}".encode(), digest_size=8).digest(), "little") >> 1


@torch.no_grad()
def evaluate_loader(model, loader: DeviceLoader, normalize, num_classes: int, accelerator: Accelerator,
                    channels_last: bool = False) -> dict:
    """Loss (plain cross-entropy), accuracy and the confusion matrix of `model` on `loader`'s split, every image
    counted once over all ranks. Nothing in the loop waits for the device; one reduction at the end.

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
        cells = labels * num_classes + logits.argmax(1)
        confusion.scatter_add_(0, cells, torch.ones_like(cells))  # bincount would wait for the device to size itself
    model.train(was_training)
    loss_sum, confusion = accelerator.reduce(loss_sum), accelerator.reduce(confusion).view(num_classes, num_classes)
    count = int(confusion.sum())
    return {"loss": loss_sum.item() / count, "acc": confusion.diag().sum().item() / count, "samples": count,
            "per_class": (confusion.diag().double() / confusion.sum(1).clamp_min(1)).tolist(),
            "confusion": confusion.cpu()}


@dataclass(kw_only=True)
class Loop:
    """What every optimizer step of a run uses; built once by the Trainer."""
    accelerator: Accelerator
    model: torch.nn.Module  # the plain network: its weights are checked for inf/nan and averaged into the EMA
    wrapped: torch.nn.Module  # what the steps call: `model` behind DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: Callable  # summed loss over a micro-batch: (logits, labels, or mix's soft targets)
    augment: Callable  # (uint8 images, generator) -> float input
    mix: Callable | None = None  # (input, labels, generator) -> (mixed input, soft targets): data.mix, or None
    generator: torch.Generator
    seed: int
    grad_accum: int = 1
    channels_last: bool = False
    checkpoint_every_steps: int = 0
    stop_check_every: int = 1  # steps between stop checks (checkpoints and an epoch's last step always check)
    ema_update: Callable | None = None  # (step) after each optimizer step: the weight average's update, or None
    step_log: Callable | None = None  # (step, loss_sum on the device, images, lr) after each step: tracking.StepLog
    profile_step: Callable | None = None  # () after each step: profiling.StepProfiler.step with --profile, else None
    after_step: Callable | None = None  # a test hook (resnet_lite.hooks.step_hook), None in real runs


FINISHED, STOPPED, DIVERGED = "finished", "stopped", "diverged"


@dataclass
class EpochResult:
    outcome: str  # FINISHED; STOPPED (a stop signal: save, then end the run); DIVERGED (end it without saving)
    batch: int  # optimizer steps done in the epoch (those before a resume included)
    loss_sum: torch.Tensor  # this process's summed train loss over the epoch, on the device
    images: int  # this process's images in the epoch (those before a resume included)
    lr: float  # the learning rate of the epoch's last step
    stop: Stop | None = None  # what asked for STOPPED or DIVERGED: the same on every process
    checkpointed: bool = False  # STOPPED at a step whose checkpoint was due anyway: it is written (the same everywhere)
    saved: Path | None = None  # that checkpoint's path, on the main process
    train_loss: float | None = None  # FINISHED: mean train loss of the epoch over all processes
    images_per_second: float | None = None  # FINISHED: all processes' images trained in this call, per second


def train_one_epoch(loop: Loop, state: TrainState, epoch: int, loader: DeviceLoader, progress, check,
                    save: Callable) -> EpochResult:
    """Epoch `epoch` (0-based) from batch `state.batch` on: per batch reseed, augment, micro-batches, optimizer and
    scheduler step, EMA, the stop check; `save(batch, loss_sum, images) -> path` writes the checkpoints due every
    loop.checkpoint_every_steps steps. Advances state.step. Returns when the epoch ends or a check asks to stop (the
    same step on every process): the caller saves, or not, and ends the run. A signal in the epoch's last step is
    reported as FINISHED: the caller answers it after the epoch's evaluation."""
    accelerator = loop.accelerator
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    loader.set_epoch(epoch)
    skip = state.batch
    loss_sum = torch.full((), state.train_loss_sum if skip else 0.0, device=device)
    seen = state.train_images if skip else 0  # this rank's images in this epoch
    progress.start_epoch(epoch + 1, skip)
    t_start, trained, lr = time.perf_counter(), 0, loop.optimizer.param_groups[0]["lr"]
    steps = len(loader)
    loop.wrapped.train()
    for batch, (images, labels) in enumerate(itertools.islice(loader, skip, None), start=skip):
        loop.generator.manual_seed(step_seed(loop.seed, rank, state.step))
        x, targets = loop.augment(images, loop.generator), labels
        if loop.mix is not None:  # after the augmentation's draws, from the same generator
            x, targets = loop.mix(x, labels, loop.generator)
        if loop.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        n = len(labels)
        chunks = min(loop.grad_accum, n)
        for i, (xc, yc) in enumerate(zip(x.tensor_split(chunks), targets.tensor_split(chunks), strict=True)):
            # gradients are all-reduced once per optimizer step, on the last micro-batch
            with nullcontext() if i == chunks - 1 else accelerator.no_sync(loop.wrapped):
                with accelerator.autocast():
                    logits = loop.wrapped(xc)
                loss = loop.criterion(logits.float(), yc) / n  # sums to the mean over this rank's batch
                accelerator.backward(loss)
            loss_sum += loss.detach() * n
        lr = loop.optimizer.param_groups[0]["lr"]
        loop.optimizer.step()
        loop.scheduler.step()
        loop.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        if loop.ema_update:
            loop.ema_update(state.step)
        seen += n
        trained += n * world
        # the loss is read within this call, only when the display refreshes (the defaults bind this step's values)
        progress.update(n * world, lambda loss_sum=loss_sum, seen=seen: (loss_sum / seen).item(), lr)
        if loop.step_log:
            loop.step_log(state.step, loss_sum, seen, lr)
        if loop.profile_step:
            loop.profile_step()
        if loop.after_step:
            loop.after_step(state.step)
        last = batch + 1 == steps
        due = bool(loop.checkpoint_every_steps) and state.step % loop.checkpoint_every_steps == 0 and not last
        # the same answer on every process; a signal in an epoch's last step is answered after its evaluation
        asked = None
        if due or last or state.step % loop.stop_check_every == 0:
            asked = check(state.step, lr, loss_sum, loop.model, wait=due or last)
        if asked and asked.diverged:
            return EpochResult(DIVERGED, batch + 1, loss_sum, seen, lr, stop=asked)
        saved = save(batch + 1, loss_sum, seen) if due else None
        if asked and not last:
            return EpochResult(STOPPED, batch + 1, loss_sum, seen, lr, stop=asked, checkpointed=due, saved=saved)
    totals = accelerator.reduce(torch.stack([loss_sum, torch.tensor(float(seen), device=device)]))
    train_loss = (totals[0] / totals[1]).item()  # waits for the epoch's last step: the time below is the device's
    seconds = time.perf_counter() - t_start
    return EpochResult(FINISHED, steps, loss_sum, seen, lr, train_loss=train_loss,
                       images_per_second=trained / max(seconds, 1e-9))
