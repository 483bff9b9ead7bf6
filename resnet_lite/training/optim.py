"""Optimizers (Adam, AdamW, SGD) and per-step learning-rate schedules.

    optimizer = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, nesterov=True))
    scheduler = build_scheduler(optimizer, ScheduleConfig("onecycle", warmup_epochs=1), steps_per_epoch, epochs)
    ... optimizer.step(); scheduler.step()     # once per optimizer step, never per epoch

Fine-tuning: the classifier (timm's get_classifier) keeps `lr`; the rest ("the backbone") gets backbone_lr_scale times
it, timm's layer-wise decay on top (layer_decay), and lr 0 for the first freeze_epochs.

`lr` is used as given: no scaling with batch size or process count happens behind the user's back.
"""
import math
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..models.tools import classifier_prefixes

__all__ = ["OptimConfig", "ScheduleConfig", "param_groups", "classifier_prefixes", "build_optimizer", "build_scheduler",
           "lr_factor", "warmup_steps", "warmup_note",
           "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "report_cosine", "onecycle", "constant")
RENAMED_SCHEDULES = {"seed_cosine": "report_cosine"}  # older configs and checkpoints say seed_cosine


@dataclass
class OptimConfig:
    name: str = field(default="adam", metadata={"choices": OPTIMIZERS, "help": "the optimizer"})
    lr: float = field(default=0.01, metadata={"help": "peak learning rate, used as given whatever the batch size"})
    weight_decay: float = field(default=0.0, metadata={"help": "adam/sgd: L2 added to the gradient; adamw: decoupled"})
    momentum: float = field(default=0.9, metadata={
        "help": "sgd only (torch's default is 0; the report's SGD row sets 0 in its preset)"})
    nesterov: bool = field(default=False, metadata={"help": "sgd only"})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "adam/adamw"})
    no_decay_norm_bias: bool = field(default=False, metadata={
        "help": "no weight decay on 1-d parameters: norm weights and biases"})
    backbone_lr_scale: float = field(default=1.0, metadata={
        "help": "fine-tuning: the learning rate of everything but the classifier (timm's get_classifier), as a "
                "fraction of lr; the classifier keeps lr"})
    freeze_epochs: int = field(default=0, metadata={
        "help": "fine-tuning: epochs at the start in which only the classifier learns (the rest has lr 0, so DDP's "
                "static graph and resuming are unchanged; BatchNorm statistics still adapt)"})
    layer_decay: float | None = field(default=None, metadata={
        "help": "fine-tuning: layer-wise lr decay through timm's param_groups_layer_decay: the head keeps lr, each "
                "earlier layer group (the model's group_matcher) gets layer_decay times the next (times "
                "backbone_lr_scale)"})

    def __post_init__(self):
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise UserError(f"optim: lr={self.lr} must be > 0, weight_decay={self.weight_decay} >= 0, "
                            f"momentum={self.momentum} in [0, 1)")
        if not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"optim.betas={list(self.betas)} must both be in [0, 1)")
        if self.nesterov and self.name == "sgd" and self.momentum == 0:
            raise UserError("optim.nesterov=true needs optim.momentum > 0")
        if self.backbone_lr_scale <= 0 or self.freeze_epochs < 0:
            raise UserError(f"optim.backbone_lr_scale={self.backbone_lr_scale} must be > 0 and "
                            f"optim.freeze_epochs={self.freeze_epochs} >= 0")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise UserError(f"optim.layer_decay={self.layer_decay} must be in (0, 1] (or null for none)")


@dataclass
class ScheduleConfig:
    name: str = field(default="cosine", metadata={"choices": SCHEDULES, "help": (
        "cosine: one cosine from lr to final_lr_fraction * lr over the run, after the warm-up; "
        "report_cosine: the report's notebook's CosineAnnealingLR(T_max=200, eta_min=0) stepped every batch, so the lr "
        "falls to 0 and climbs back every 2 * t_max steps for the whole run (the faithful reproduction); "
        "onecycle: linear warm-up to lr, then linear decay to final_lr_fraction * lr (airbench's triangle); "
        "constant: lr after the warm-up")})
    warmup_epochs: float = field(default=0.0, metadata={
        "help": "linear ramp from start_lr_fraction * lr to lr (not used by report_cosine), at most "
                "warmup_max_fraction of the run"})
    warmup_max_fraction: float = field(default=0.25, metadata={
        "help": "the warm-up takes at most this fraction of the run, so that a run shorter than its preset planned "
                "(fast: 2.5 of 15 epochs) still comes down to final_lr_fraction * lr; the console says when it cuts "
                "the warm-up. 1: warmup_epochs as given, up to the whole run"})
    start_lr_fraction: float = field(default=0.0, metadata={
        "help": "lr at step 0 during the warm-up, as a fraction of lr"})
    final_lr_fraction: float = field(default=0.0, metadata={
        "help": "lr at the end (cosine, onecycle) or the minimum (report_cosine), as a fraction of lr"})
    t_max: int = field(default=200, metadata={"help": "optimizer steps, report_cosine's half period"})

    def __post_init__(self):
        if self.warmup_epochs < 0 or self.t_max < 1:
            raise UserError(f"schedule: warmup_epochs={self.warmup_epochs} must be >= 0 and t_max={self.t_max} >= 1")
        if not 0 < self.warmup_max_fraction <= 1:
            raise UserError(f"schedule.warmup_max_fraction={self.warmup_max_fraction} must be in (0, 1]")
        if not (0 <= self.start_lr_fraction <= 1 and 0 <= self.final_lr_fraction <= 1):
            raise UserError("schedule.start_lr_fraction and schedule.final_lr_fraction must be in [0, 1]")
        self.name = RENAMED_SCHEDULES.get(self.name, self.name)
        if self.name == "report_cosine" and self.warmup_epochs:
            raise UserError("schedule report_cosine has no warm-up; "
                            "set schedule.warmup_epochs=0 or use cosine/onecycle")


def _decay_groups(model: torch.nn.Module, cfg: "OptimConfig") -> list[dict]:
    """timm's weight-decay (and, with layer_decay, lr_scale) groups: 1-d parameters without decay when asked."""
    if cfg.layer_decay is not None:
        from timm.optim import param_groups_layer_decay

        no_weight_decay = getattr(model, "no_weight_decay", None)  # timm's models may name parameters to skip
        skip = no_weight_decay() if no_weight_decay is not None else ()
        return param_groups_layer_decay(model, cfg.weight_decay, skip, weight_decay_exclude_1d=cfg.no_decay_norm_bias,
                                        layer_decay=cfg.layer_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    if not (cfg.no_decay_norm_bias and cfg.weight_decay):
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def param_groups(model: torch.nn.Module, cfg: "OptimConfig") -> list[dict]:
    """The optimizer's groups, each with its `lr` (cfg.lr * its scale) and `weight_decay`; with any fine-tuning
    option, each group is all classifier (`backbone` False) or all the rest (True), and the classifier's come first,
    so param_groups[0]['lr'] (what the engine logs) is the classifier's, the largest."""
    groups = _decay_groups(model, cfg)
    if not (cfg.backbone_lr_scale != 1 or cfg.freeze_epochs or cfg.layer_decay is not None):
        return [dict(g, lr=cfg.lr) for g in groups]
    head = {id(p) for name, p in model.named_parameters() if name.startswith(classifier_prefixes(model))}
    split = []
    for g in groups:
        for backbone in (False, True):
            params = [p for p in g["params"] if (id(p) not in head) == backbone]
            scale = g.get("lr_scale", 1.0) * (cfg.backbone_lr_scale if backbone else 1.0)
            if params:
                split.append({"params": params, "weight_decay": g["weight_decay"], "lr": cfg.lr * scale,
                              "backbone": backbone})
    return sorted(split, key=lambda g: (g["backbone"], -g["lr"]))


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer for `model`'s parameters; fused kernels when they all live on CUDA."""
    groups = param_groups(model, cfg)
    fused = all(p.is_cuda for g in groups for p in g["params"]) or None
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused)
    adam = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    beta1, beta2 = cfg.betas  # a list when read from YAML
    return adam(groups, lr=cfg.lr, betas=(beta1, beta2), fused=fused)


def warmup_steps(cfg: ScheduleConfig, steps_per_epoch: int, epochs: int) -> int:
    """Optimizer steps of the warm-up: warmup_epochs, at most warmup_max_fraction of the run."""
    return min(round(cfg.warmup_epochs * steps_per_epoch), round(cfg.warmup_max_fraction * steps_per_epoch * epochs))


def warmup_note(cfg: ScheduleConfig, steps_per_epoch: int, epochs: int) -> str | None:
    """What the console says when the run is too short for the warm-up asked for (None: it is not)."""
    kept = warmup_steps(cfg, steps_per_epoch, epochs)
    if cfg.name == "report_cosine" or kept >= round(cfg.warmup_epochs * steps_per_epoch):
        return None
    kept_epochs = kept / steps_per_epoch
    return (f"schedule.warmup_epochs={cfg.warmup_epochs:g} is more than {cfg.warmup_max_fraction:g} of this "
            f"{epochs}-epoch run: the warm-up takes {kept_epochs:.3g} epochs, so that the {cfg.name} schedule still "
            f"comes down (schedule.warmup_max_fraction=1 keeps the whole warm-up)")


def lr_factor(cfg: ScheduleConfig, steps_per_epoch: int, epochs: int):
    """f(step) -> the learning rate after `step` optimizer steps, as a fraction of the peak lr."""
    total = steps_per_epoch * epochs
    warmup = warmup_steps(cfg, steps_per_epoch, epochs)
    start, final = cfg.start_lr_fraction, cfg.final_lr_fraction

    def factor(step: int) -> float:
        if cfg.name == "report_cosine":
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


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int, epochs: int,
                    freeze_epochs: int = 0):
    """A LambdaLR to step once per optimizer step; its state_dict holds the step count for resuming. Each group
    follows the schedule from its own lr; `backbone` groups (param_groups) stay at lr 0 for the first
    `freeze_epochs`: their parameters do not move, while DDP and the optimizer keep seeing every one of them."""
    factor = lr_factor(cfg, steps_per_epoch, epochs)
    frozen = freeze_epochs * steps_per_epoch

    def backbone(step: int) -> float:
        return 0.0 if step < frozen else factor(step)

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [backbone if g.get("backbone") and frozen else factor for g in optimizer.param_groups])
