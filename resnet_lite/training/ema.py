"""An exponential moving average (EMA) of the weights, which the trainer evaluates and saves when enabled.

    ema = build_ema(cfg.ema, model)                  # None unless cfg.ema.enabled
    ... optimizer.step(); step += 1
    update_ema(ema, model, cfg.ema, step, total)     # acts every cfg.ema.every optimizer steps of `total`

The average is timm's ModelEmaV3 (foreach lerp over the state_dict, BatchNorm statistics included); the decay schedule
is ours, in optimizer steps.

Why a ramp: a fast recipe's weights move far while the learning rate is high and gain most of their accuracy in the
last epochs, as it anneals to zero. A constant decay then averages in weights from epochs ago: with the `fast`
preset's old 0.99 (half-life 69 steps), the average sat 28 points below the raw weights at the end of a 12-epoch
run. airbench94 (KellerJordan/cifar10-airbench) scales its decay by (step / total) ** 3, so the average is nearly
the current weights until late in the run and spans only the last few dozen steps at the end; ramp_power=3 does that.
"""
from dataclasses import dataclass, field

import torch
from timm.utils import ModelEmaV3

from ..errors import UserError

__all__ = ["EMAConfig", "build_ema", "ema_decay", "update_ema"]


@dataclass
class EMAConfig:
    enabled: bool = field(default=False, metadata={
        "help": "evaluate and save the averaged weights instead of the raw ones"})
    decay: float = field(default=0.999, metadata={
        "help": "per optimizer step; the average's half-life is ln(0.5) / ln(decay) steps (693 at 0.999)"})
    every: int = field(default=1, metadata={
        "help": "optimizer steps between updates; each update then uses decay ** every, the same half-life"})
    warmup_power: float = field(default=0.0, metadata={"help": (
        "> 0: decay at step t is min(decay, 1 - (1 + t) ** -warmup_power) (timm's warm-up), so the early, poor "
        "weights fade fast; 3/4 reaches 0.99 after 463 steps. 0 = the constant decay from step 1")})
    ramp_power: float = field(default=0.0, metadata={"help": (
        "> 0: each update's decay is scaled by (step / the run's total steps) ** ramp_power (airbench94's cubic "
        "schedule at 3): the average follows the weights closely while they move fast and spans more steps only "
        "as the run ends. 0 = no ramp")})
    copy_buffers: bool = field(default=False, metadata={
        "help": "BatchNorm running statistics copied from the model instead of averaged"})
    eval_raw: bool = field(default=True, metadata={
        "help": "evaluate the raw weights too, wherever the average is evaluated (metrics test_acc_raw, summary "
                "final_test_acc_raw; a warning when the average ends more than a point below them)"})

    def __post_init__(self):
        if not 0.0 <= self.decay < 1.0 or self.every < 1 or self.warmup_power < 0 or self.ramp_power < 0:
            raise UserError(f"ema: decay={self.decay} must be in [0, 1), every={self.every} >= 1, "
                            f"warmup_power={self.warmup_power} >= 0 and ramp_power={self.ramp_power} >= 0")


def build_ema(cfg: EMAConfig, model: torch.nn.Module) -> ModelEmaV3 | None:
    """A copy of `model` (same device, dtype, memory format) to average into, in eval mode; None when disabled.
    Build it from the plain module after it is on its device, before any DDP or compile wrapper."""
    if not cfg.enabled:
        return None
    return ModelEmaV3(model, decay=cfg.decay, exclude_buffers=cfg.copy_buffers)


def ema_decay(cfg: EMAConfig, step: int, total: int | None = None) -> float:
    """The decay of the update made after optimizer step `step` (1-based) of a run of `total` steps, for `cfg.every`
    steps at once."""
    decay = cfg.decay
    if cfg.warmup_power > 0:
        decay = min(decay, 1.0 - (1.0 + step) ** -cfg.warmup_power)
    decay = decay ** cfg.every
    if cfg.ramp_power > 0:
        if not total:
            raise ValueError("ema.ramp_power needs the run's total number of steps")
        decay *= min(step / total, 1.0) ** cfg.ramp_power
    return decay


@torch.no_grad()
def update_ema(ema: ModelEmaV3 | None, model: torch.nn.Module, cfg: EMAConfig, step: int,
               total: int | None = None) -> None:
    """After optimizer step `step` (1-based) of `total`: ema = decay * ema + (1 - decay) * model, every `cfg.every`
    steps."""
    if ema is None or step % cfg.every:
        return
    decay = ema_decay(cfg, step, total)
    if cfg.copy_buffers:
        ema.apply_update_no_buffers_(model, decay)
    else:
        ema.apply_update_(model, decay)
