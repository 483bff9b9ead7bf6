"""Optimizers (Adam, AdamW, SGD) and per-step learning-rate schedules.

    optimizer = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, nesterov=True))
    scheduler = build_scheduler(optimizer, ScheduleConfig("onecycle", warmup_epochs=1), steps_per_epoch, epochs)
    ... optimizer.step(); scheduler.step()     # once per optimizer step, never per epoch

`lr` is used as given: no scaling with batch size or process count happens behind the user's back.
"""
import math
from dataclasses import dataclass, field

import torch

from .errors import UserError

__all__ = ["OptimConfig", "ScheduleConfig", "build_optimizer", "build_scheduler", "lr_factor",
           "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "seed_cosine", "onecycle", "constant")


@dataclass
class OptimConfig:
    name: str = field(default="adam", metadata={"choices": OPTIMIZERS, "help": "the optimizer"})
    lr: float = field(default=0.01, metadata={"help": "peak learning rate, used as given whatever the batch size"})
    weight_decay: float = field(default=0.0, metadata={"help": "adam/sgd: L2 added to the gradient; adamw: decoupled"})
    momentum: float = field(default=0.9, metadata={
        "help": "sgd only (torch's default is 0; the seed's SGD row sets 0 in its preset)"})
    nesterov: bool = field(default=False, metadata={"help": "sgd only"})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "adam/adamw"})
    no_decay_norm_bias: bool = field(default=False, metadata={
        "help": "no weight decay on 1-d parameters: norm weights and biases"})

    def __post_init__(self):
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise UserError(f"optim: lr={self.lr} must be > 0, weight_decay={self.weight_decay} >= 0, "
                            f"momentum={self.momentum} in [0, 1)")
        if not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"optim.betas={list(self.betas)} must both be in [0, 1)")
        if self.nesterov and self.name == "sgd" and self.momentum == 0:
            raise UserError("optim.nesterov=true needs optim.momentum > 0")


@dataclass
class ScheduleConfig:
    name: str = field(default="cosine", metadata={"choices": SCHEDULES, "help": (
        "cosine: one cosine from lr to final_lr_fraction * lr over the run, after the warm-up; "
        "seed_cosine: the seed notebook's CosineAnnealingLR(T_max=200, eta_min=0) stepped every batch, so the lr "
        "falls to 0 and climbs back every 2 * t_max steps for the whole run (the faithful reproduction); "
        "onecycle: linear warm-up to lr, then linear decay to final_lr_fraction * lr (airbench's triangle); "
        "constant: lr after the warm-up")})
    warmup_epochs: float = field(default=0.0, metadata={
        "help": "linear ramp from start_lr_fraction * lr to lr (not used by seed_cosine)"})
    start_lr_fraction: float = field(default=0.0, metadata={"help": "lr at step 0 during the warm-up, as a fraction of lr"})
    final_lr_fraction: float = field(default=0.0, metadata={
        "help": "lr at the end (cosine, onecycle) or the minimum (seed_cosine), as a fraction of lr"})
    t_max: int = field(default=200, metadata={"help": "optimizer steps, seed_cosine's half period"})

    def __post_init__(self):
        if self.warmup_epochs < 0 or self.t_max < 1:
            raise UserError(f"schedule: warmup_epochs={self.warmup_epochs} must be >= 0 and t_max={self.t_max} >= 1")
        if not (0 <= self.start_lr_fraction <= 1 and 0 <= self.final_lr_fraction <= 1):
            raise UserError("schedule.start_lr_fraction and schedule.final_lr_fraction must be in [0, 1]")
        if self.name == "seed_cosine" and self.warmup_epochs:
            raise UserError("schedule seed_cosine has no warm-up; set schedule.warmup_epochs=0 or use cosine/onecycle")


def param_groups(model: torch.nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """One group, or two with weight decay 0 for 1-d parameters (norm weights, biases), as timm's rule."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not (no_decay_norm_bias and weight_decay):
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer for `model`'s parameters; fused kernels when they all live on CUDA."""
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay_norm_bias)
    fused = all(p.is_cuda for g in groups for p in g["params"]) or None
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused)
    adam = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)


def lr_factor(cfg: ScheduleConfig, steps_per_epoch: int, epochs: int):
    """f(step) -> the learning rate after `step` optimizer steps, as a fraction of the peak lr."""
    total = steps_per_epoch * epochs
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total)
    start, final = cfg.start_lr_fraction, cfg.final_lr_fraction

    def factor(step: int) -> float:
        if cfg.name == "seed_cosine":
            return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * step / cfg.t_max))
        if step < warmup:
            return start + (1 - start) * step / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        if cfg.name == "cosine":
            return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.name == "onecycle":
            return 1 + (final - 1) * progress
        return 1.0

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int, epochs: int):
    """A LambdaLR to step once per optimizer step; its state_dict holds the step count for resuming."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch, epochs))
