"""MixUp and CutMix, batched on the device, with the semantics of timm's `Mixup` (timm/data/mixup.py): each image is
mixed with its mirror in the batch (i with N-1-i); per batch (mix_mode=batch: one draw for all) or per image (elem);
with probability mix_prob an image is mixed at all, and when both are on, switch_prob picks CutMix over MixUp. MixUp
blends the pair with lam ~ Beta(mixup_alpha); CutMix pastes the partner's box of area about (1 - lam) of the image,
lam ~ Beta(cutmix_alpha), the box as timm's rand_bbox places it and lam corrected to the pasted area. The targets are
timm's mixup_target: label-smoothed one-hot rows, y * lam + mirror(y) * (1 - lam); the loss on them is timm's
SoftTargetCrossEntropy (summed here, as the trainer's loss is).

    mix = build_mix(resolve(cfg.augment), num_classes=10, label_smoothing=0.1)    # None when both alphas are 0
    x, targets = mix(augmented, labels, generator)   # float N x C x H x W, N x num_classes; after build_augment's fn
    loss = soft_target_loss(logits, targets)         # summed over the batch

All randomness comes from `generator` (the trainer's, seeded per step: an exact resume repeats it), drawn on its
device after the augmentation's draws, so turning mixing on leaves those unchanged; nothing is read back to the host.
"""
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F

__all__ = ["MIX_MODES", "MixDraw", "draw_mix", "apply_mix", "build_mix", "soft_target_loss"]

MIX_MODES = ("batch", "elem")  # timm's mode names: one draw per batch, or per image


@dataclass
class MixDraw:
    """The random part of a mix, timm's _params_per_batch / _params_per_elem and rand_bbox's centre, per image."""
    lam: torch.Tensor  # float32 N: the drawn lam (1 for an image left unmixed)
    cutmix: torch.Tensor  # bool N: CutMix, else MixUp
    centre: torch.Tensor  # int64 N x 2: the box's centre (y, x), as np.random.randint(0, H), (0, W)


def _beta(alpha: float, n: int, generator, device) -> torch.Tensor:
    """n samples of Beta(alpha, alpha), as X / (X + Y) of two Gamma(alpha) draws."""
    gamma = torch._standard_gamma(torch.full((n, 2), float(alpha), device=device), generator=generator)
    return gamma[:, 0] / gamma.sum(1)


def draw_mix(cfg, n: int, h: int, w: int, generator=None, device="cpu") -> MixDraw:
    """The draws of `n` images (cfg: a resolved AugmentConfig; mix_mode=batch draws once and repeats it)."""
    device = generator.device if generator is not None else torch.device(device)
    k = 1 if cfg.mix_mode == "batch" else n
    u = torch.rand(k, 4, generator=generator, device=device)  # mix?, CutMix?, centre y, centre x
    mixup = _beta(cfg.mixup_alpha, k, generator, device) if cfg.mixup_alpha > 0 else None
    cutmix = _beta(cfg.cutmix_alpha, k, generator, device) if cfg.cutmix_alpha > 0 else None
    if mixup is not None and cutmix is not None:
        use_cutmix = u[:, 1] < cfg.switch_prob
        lam = torch.where(use_cutmix, cutmix, mixup)
    else:
        use_cutmix = torch.full((k,), cutmix is not None, device=device)
        drawn = mixup if mixup is not None else cutmix
        assert drawn is not None, "draw_mix needs mixup_alpha or cutmix_alpha > 0"  # build_mix returns None otherwise
        lam = drawn
    lam = torch.where(u[:, 0] < cfg.mix_prob, lam, torch.ones_like(lam))
    centre = torch.stack([(u[:, 2] * h).long().clamp_(max=h - 1), (u[:, 3] * w).long().clamp_(max=w - 1)], 1)
    return MixDraw(lam.expand(n), use_cutmix.expand(n), centre.expand(n, 2))


def apply_mix(x: torch.Tensor, labels: torch.Tensor, draw: MixDraw, num_classes: int, smoothing: float = 0.0,
              per_batch: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixed x, soft targets) of a draw, as timm's Mixup makes them from the same lam, kind and box centre.

    timm computes a batch's box and lam in float64 and an image's in float32 (its lam array is float32): so here."""
    n, _, h, w = x.shape
    dev = x.device
    drawn, cutmix, centre = draw.lam.to(dev), draw.cutmix.to(dev), draw.centre.to(dev)
    ratio = (1 - drawn.to(torch.float64 if per_batch else torch.float32)).sqrt()
    # rand_bbox: sides int(H * sqrt(1 - lam)) and int(W * ...) about the centre, clipped to the image
    edges = []
    for axis, size in ((0, h), (1, w)):
        side = (size * ratio).floor().long() * cutmix  # MixUp images: an empty box
        edges += [(centre[:, axis] - side // 2).clamp(0, size), (centre[:, axis] + (side + 1) // 2).clamp(0, size)]
    top, bottom, left, right = edges
    area = (bottom - top) * (right - left)
    lam64 = torch.where(cutmix, 1.0 - area.double() / (h * w), drawn.double())  # CutMix: lam of the pasted area
    lam = lam64.float()
    rest = (1.0 - lam64).float() if per_batch else 1.0 - lam

    mirror = x.flip(0)
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    inside = ((ys >= top.view(n, 1, 1)) & (ys < bottom.view(n, 1, 1)) & (xs >= left.view(n, 1, 1))
              & (xs < right.view(n, 1, 1)))
    blended = x * lam.view(n, 1, 1, 1) + mirror * rest.view(n, 1, 1, 1)
    mixed = torch.where(cutmix.view(n, 1, 1, 1), torch.where(inside.unsqueeze(1), mirror, x), blended)

    off = smoothing / num_classes
    one_hot = torch.full((n, num_classes), off, device=dev).scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)
    targets = one_hot * lam.unsqueeze(1) + one_hot.flip(0) * rest.unsqueeze(1)
    return mixed, targets


class Mix(Protocol):
    """What build_mix returns: the mixing function, with the resolved AugmentConfig it mixes by as `config`."""

    config: Any

    def __call__(self, x: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...


def build_mix(cfg, num_classes: int, label_smoothing: float = 0.0) -> Mix | None:
    """fn(float x N x C x H x W, labels N, generator) -> (mixed x, soft targets N x num_classes), or None when
    cfg (a resolved AugmentConfig) mixes nothing."""
    if cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0 or cfg.mix_prob <= 0:
        return None

    def mix(x, labels, generator=None):
        n, _, h, w = x.shape
        draw = draw_mix(cfg, n, h, w, generator, x.device)
        return apply_mix(x, labels, draw, num_classes, label_smoothing, per_batch=cfg.mix_mode == "batch")

    mixer = cast(Mix, mix)  # a plain function; the Protocol names the attribute set on it
    mixer.config = cfg
    return mixer


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """timm's SoftTargetCrossEntropy, summed over the batch: sum_i sum_c -targets[i, c] * log_softmax(logits)[i, c]."""
    return torch.sum(-targets * F.log_softmax(logits, dim=-1))
