"""What the trainer evaluates: an exponential moving average (EMA) of the weights, seen through test-time augmentation.

    ema = build_ema(cfg.ema, net)                    # None unless cfg.ema.enabled
    ... optimizer.step(); step += 1
    update_ema(ema, net, cfg.ema, step)              # acts every cfg.ema.every optimizer steps
    logits = TTA(ema.module if ema else net, level=cfg.tta)(x)

The average is timm's ModelEmaV3 (foreach lerp over the state_dict); the decay schedule is ours, in optimizer steps.
TTA follows airbench94's `infer`: level 1 averages the logits of an image and its mirror image, level 2 averages that
(weight 1/2) with the same pair shifted one pixel up-left and one pixel down-right under reflect padding (1/4 each).
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3

from .errors import UserError

__all__ = ["EMAConfig", "build_ema", "ema_decay", "update_ema", "TTA", "TTA_LEVELS", "check_tta"]

TTA_LEVELS = (0, 1, 2)  # none, flip, flip + 1-pixel translate


def check_tta(level) -> int:
    if level not in TTA_LEVELS:
        raise UserError(f"tta={level} is not one of {', '.join(map(str, TTA_LEVELS))} (0 none, 1 flip, 2 flip + translate)")
    return level


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


class TTA(torch.nn.Module):
    """Test-time augmentation around a model of N x C x H x W batches; level 0 is the model itself."""

    def __init__(self, model: torch.nn.Module, level: int = 1):
        super().__init__()
        self.model, self.level = model, check_tta(level)

    def _mirror(self, x):
        return (self.model(x) + self.model(_like(x.flip(-1), x))) / 2

    def forward(self, x):
        if self.level == 0:
            return self.model(x)
        logits = self._mirror(x)
        if self.level == 1:
            return logits
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = (self._mirror(_like(padded[..., :h, :w], x)) + self._mirror(_like(padded[..., 2:, 2:], x))) / 2
        return (logits + shifted) / 2


def _like(y, x):
    """y laid out in memory as x (channels_last or not), so a compiled model sees one input layout."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return y.contiguous(memory_format=torch.channels_last)
    return y.contiguous()
