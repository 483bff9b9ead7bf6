"""What a checkpoint holds: where the run is (TrainState), the modules' state_dicts, and each process's own extras.

A checkpoint is a plain dict of tensors and plain data (nanoGPT style), loadable with torch.load(weights_only=True):

    model, optimizer, scheduler, scaler, ema  state_dicts (scaler None without fp16, ema None without an EMA)
    config                                    the resolved TrainConfig as a dict
    classes                                   the class names the model was trained on
    world_size                                processes that wrote it
    initial_weights                           where the run's starting weights came from
                                              (resnet_lite.models.pretrained), None from scratch; a resume keeps it for
                                              the summary
    rng                                       the main process's generators (rng_state)
    ranks                                     per process, rank_extras(): its partial-epoch loss and image count, rng
                                              and BatchNorm buffers of [model, ema], which differ between processes
                                              within an epoch
    + every field of TrainState               epoch, batch, step, elapsed, best, best_val, best_step, wandb_id,
                                              train_loss_sum, train_images

Augmentation draws from a generator seeded per step (resnet_lite.training.engine.step_seed), so it needs no saved state;
the data order is a function of (seed, epoch), so resuming mid-epoch skips `batch` batches.
"""
import dataclasses
import random
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["TrainState", "REQUIRED", "rng_state", "set_rng_state", "rank_extras", "restore_rank_extras"]


@dataclass
class TrainState:
    """Where a run is, besides its modules' weights: what a resume needs to continue as if never stopped."""
    epoch: int = 0  # epochs completed
    batch: int = 0  # optimizer steps done in epoch `epoch` (0 at an epoch boundary)
    step: int = 0  # optimizer steps since the start of the run
    elapsed: float = 0.0  # seconds trained before the current process started
    best: dict = field(default_factory=lambda: {"acc": -1.0, "epoch": 0})  # best test accuracy so far
    best_val: dict = field(default_factory=lambda: {"acc": -1.0, "epoch": 0, "test_acc": None})  # model selection
    #   on the held-out split, when there is one
    best_step: int | None = None  # the step of the selected epoch's checkpoint (kept as the best)
    wandb_id: str | None = None  # the W&B run a resume continues
    train_loss_sum: float = 0.0  # the partial epoch's running train loss sum (main process) ...
    train_images: int = 0  # ... over this many images, so a resumed epoch's metrics stay whole

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for f in dataclasses.fields(self):
            if f.name in state and state[f.name] is not None:  # older checkpoints lack best_val
                setattr(self, f.name, state[f.name])


# what makes a file a checkpoint, not another .pt
REQUIRED = ("model", "optimizer", "scheduler", "config", "rng", "epoch", "batch", "step")


def rng_state() -> dict:
    """The process's generators: {"torch", "cuda" (per device), "python", "numpy", "numpy_rest"}."""
    py = random.getstate()
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # legacy=True: the global generator is MT19937, given as a tuple
    kind, keys, pos, has_gauss, gauss = state
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": [py[0], *py[1], py[2]], "numpy": torch.from_numpy(keys.astype(np.int64)),
            "numpy_rest": [pos, has_gauss, gauss]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "python" in state:  # checkpoints written before these were kept have only torch's
        version, *keys, gauss = state["python"]
        random.setstate((version, tuple(keys), gauss))
        pos, has_gauss, gauss = state["numpy_rest"]
        np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))


def _buffers(module) -> dict | None:
    return None if module is None else {k: v.detach().cpu().clone() for k, v in module.named_buffers()}


def rank_extras(loss_sum: float, images: int, modules: list) -> dict:
    """This process's own part of a checkpoint: what differs between processes until an epoch's end reduces it."""
    return {"train_loss_sum": float(loss_sum), "train_images": images, "rng": rng_state(),
            "buffers": [_buffers(m) for m in modules]}


def restore_rank_extras(extras: dict, modules: list) -> tuple[float, int]:
    """Put rank_extras() back into `modules` (the same list, None kept for absent ones) and the generators; returns
    the partial epoch's (train_loss_sum, train_images)."""
    for module, buffers in zip(modules, extras["buffers"], strict=True):
        for name, buffer in module.named_buffers() if module is not None else ():
            buffer.copy_(buffers[name])
    set_rng_state(extras["rng"])
    return extras["train_loss_sum"], extras["train_images"]
