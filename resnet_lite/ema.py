"""An exponential moving average (EMA) of the weights, which the trainer evaluates and saves when enabled.

    ema = build_ema(cfg.ema, model)                  # None unless cfg.ema.enabled
    ... optimizer.step(); step += 1
    update_ema(ema, model, cfg.ema, step)            # acts every cfg.ema.every optimizer steps

The average is timm's ModelEmaV3 (foreach lerp over the state_dict); the decay schedule is ours, in optimizer steps.
"""
from dataclasses import dataclass, field

import torch
from timm.utils import ModelEmaV3

from .errors import UserError

__all__ = ["EMAConfig", "build_ema", "ema_decay", "update_ema"]


@dataclass
class EMAConfig:
    enabled: bool = field(default=False, metadata={"help": "evaluate and save the averaged weights instead of the raw ones"})
    decay: float = field(default=0.999, metadata={
        "help": "per optimizer step; the average's half-life is ln(0.5) / ln(decay) steps (693 at 0.999)"})
    every: int = field(default=1, metadata={
        "help": "optimizer steps between updates; each update then uses decay ** every, the same half-life"})
    warmup_power: float = field(default=0.0, metadata={"help": (
        "> 0: decay at step t is min(decay, 1 - (1 + t) ** -warmup_power) (timm's warm-up), so the early, poor "
        "weights fade fast; 3/4 reaches 0.99 after 463 steps. 0 = the constant decay from step 1")})
    copy_buffers: bool = field(default=False, metadata={
        "help": "BatchNorm running statistics copied from the model instead of averaged"})

    def __post_init__(self):
        if not 0.0 <= self.decay < 1.0 or self.every < 1 or self.warmup_power < 0:
            raise UserError(f"ema: decay={self.decay} must be in [0, 1), every={self.every} >= 1 and "
                            f"warmup_power={self.warmup_power} >= 0")


def build_ema(cfg: EMAConfig, model: torch.nn.Module) -> ModelEmaV3 | None:
    """A copy of `model` (same device, dtype, memory format) to average into, in eval mode; None when disabled.
    Build it from the plain module after it is on its device, before any DDP or compile wrapper."""
    if not cfg.enabled:
        return None
    return ModelEmaV3(model, decay=cfg.decay, exclude_buffers=cfg.copy_buffers)


def ema_decay(cfg: EMAConfig, step: int) -> float:
    """The decay of the update made after optimizer step `step` (1-based), for `cfg.every` steps at once."""
    decay = cfg.decay
    if cfg.warmup_power > 0:
        decay = min(decay, 1.0 - (1.0 + step) ** -cfg.warmup_power)
    return decay ** cfg.every


@torch.no_grad()
def update_ema(ema: ModelEmaV3 | None, model: torch.nn.Module, cfg: EMAConfig, step: int) -> None:
    """After optimizer step `step` (1-based): ema = decay * ema + (1 - decay) * model, every `cfg.every` steps."""
    if ema is None or step % cfg.every:
        return
    decay = ema_decay(cfg, step)
    if cfg.copy_buffers:
        ema.apply_update_no_buffers_(model, decay)
    else:
        ema.apply_update_(model, decay)
