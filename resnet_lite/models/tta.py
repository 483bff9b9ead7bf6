"""Test-time augmentation (TTA): what an evaluation averages over, after airbench94's `infer`.

    logits = TTA(model, level=2)(x)      # x: normalised N x C x H x W

Level 0 is the model itself; level 1 averages the logits of an image and its mirror image; level 2 averages that
(weight 1/2) with the same pair shifted one pixel up-left and one pixel down-right under reflect padding (1/4 each).
"""
import argparse

import torch
import torch.nn.functional as F

from ..errors import UserError

__all__ = ["TTA", "TTA_LEVELS", "check_tta", "tta_level"]

TTA_LEVELS = (0, 1, 2)  # none, flip, flip + 1-pixel translate


def check_tta(level) -> int:
    if level not in TTA_LEVELS:
        raise UserError(f"tta={level} is not one of {', '.join(map(str, TTA_LEVELS))} "
                        f"(0 none, 1 flip, 2 flip + translate)")
    return level



def tta_level(text: str) -> int:
    """argparse type of the CLIs' --tta: the level must be given, or `--tta RUN` would take the run for the level."""
    if text in map(str, TTA_LEVELS):
        return int(text)
    if text.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"{text} is not a TTA level: 0 none, 1 flip, 2 flip + 1-pixel translate")
    raise argparse.ArgumentTypeError(f"a level is required, not {text!r}: write `--tta 1 {text}` "
                                     "(0 none, 1 flip, 2 flip + 1-pixel translate)")


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
