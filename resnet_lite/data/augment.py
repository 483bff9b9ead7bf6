"""Batched train-time augmentation: uint8 N x 3 x H x W in, normalised float32 out, on the batch's device.

Every sample draws its own parameters, all at once, from one `torch.rand(N, 12)` call, so a generator
makes a batch reproducible and switching one op off leaves the other ops' draws unchanged. The
geometric ops (rotate, flip, padded crop) are composed into one per-pixel source index and applied
with a single gather on the uint8 batch, the way airbench crops by index arithmetic instead of
per-sample slicing. Colour jitter follows the PIL path the report's notebook ran (torchvision's ColorJitter on PIL
images): blends towards black / the image's mean grey / each pixel's grey, clamped and truncated to
integers after every op, in a random order per image.

    fn = build_augment("report", mean, std)
    x = fn(uint8_batch, generator)          # float32, normalised

MixUp and CutMix (mixup_alpha, cutmix_alpha, ...) mix the augmented batch and its labels: resnet_lite.data.mix.
"""
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from resnet_lite.errors import UserError, did_you_mean

from .images import _check_batch, _on_device, _scale_shift
from .mix import MIX_MODES

_PAD_MODES = ("zero", "reflect")
_JITTER_OPS = ("brightness", "contrast", "saturation")
_UNIFORMS = 12  # columns: angle, flip, crop y, crop x, 3 jitter factors, 3 jitter order keys, cutout y, x


@dataclass
class AugmentConfig:
    preset: str = dataclasses.field(default="report", metadata={
        "help": "report (the report's pipeline: rotate, flip, padded crop, colour jitter) | fast (flip, translate) | "
                "none; the fields below left null take the preset's value"})
    rotate_degrees: float | None = dataclasses.field(default=None, metadata={
        "help": "angle uniform in [-d, d], nearest, zero fill, about the centre"})
    flip: bool | None = dataclasses.field(default=None, metadata={"help": "horizontal flip with p = 0.5"})
    crop_padding: int | None = dataclasses.field(default=None, metadata={
        "help": "pixels padded on each side, then a random crop back to H x W"})
    pad_mode: str | None = dataclasses.field(default=None, metadata={
        "help": "zero | reflect (airbench's translate is reflect padding 2)"})
    brightness: float | None = dataclasses.field(default=None, metadata={
        "help": "factor uniform in [max(0, 1 - b), 1 + b], as ColorJitter"})
    contrast: float | None = dataclasses.field(default=None, metadata={"help": "as brightness, for contrast"})
    saturation: float | None = dataclasses.field(default=None, metadata={"help": "as brightness, for saturation"})
    cutout: int | None = dataclasses.field(default=None, metadata={
        "help": "side in pixels of a square set to 0 after normalising (DeVries & Taylor); 0 = off"})
    mixup_alpha: float | None = dataclasses.field(default=None, metadata={
        "help": "MixUp: each image blended with its mirror in the batch, lam ~ Beta(a, a) (timm's --mixup; 0.8 is "
                "usual); 0 = off (resnet_lite.data.mix)"})
    cutmix_alpha: float | None = dataclasses.field(default=None, metadata={
        "help": "CutMix: a box of the mirror image pasted, area 1 - lam, lam ~ Beta(a, a) (timm's --cutmix; 1.0 is "
                "usual); 0 = off"})
    mix_prob: float | None = dataclasses.field(default=None, metadata={
        "help": "probability that a batch (mix_mode batch) or an image (elem) is mixed at all (timm's --mixup-prob)"})
    switch_prob: float | None = dataclasses.field(default=None, metadata={
        "help": "with both MixUp and CutMix on: the probability of CutMix (timm's --mixup-switch-prob)"})
    mix_mode: str | None = dataclasses.field(default=None, metadata={
        "help": "batch: one draw for the whole batch; elem: one per image (timm's --mixup-mode)"})


# timm's defaults; Any: the fields' types differ
NO_MIX: dict[str, Any] = dict(mixup_alpha=0.0, cutmix_alpha=0.0, mix_prob=1.0, switch_prob=0.5, mix_mode="batch")
PRESETS: dict[str, AugmentConfig] = {
    # the report's RandomRotation(5) -> RandomHorizontalFlip -> RandomCrop(32, 4) -> ColorJitter(.2, .2, .2)
    "report": AugmentConfig("report", 5.0, True, 4, "zero", 0.2, 0.2, 0.2, 0, **NO_MIX),
    # airbench94: flip + translate by reflect-padding 2; add `cutout` for longer speed runs
    "fast": AugmentConfig("fast", 0.0, True, 2, "reflect", 0.0, 0.0, 0.0, 0, **NO_MIX),
    "none": AugmentConfig("none", 0.0, False, 0, "zero", 0.0, 0.0, 0.0, 0, **NO_MIX),
}


RENAMED = {"seed": "report"}  # older configs and checkpoints say seed


def _suggest(name, choices):
    hint = did_you_mean(name, choices)
    return f"{hint + ' ' if hint else ''}(choose from {', '.join(choices)})"


def _check(name, value):
    """The value of one resolved field, converted to its type, or a UserError."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "rotate_degrees" and number and 0 <= value <= 180:
        return float(value)
    if name in _JITTER_OPS and number and value >= 0:
        return float(value)
    if name in ("crop_padding", "cutout") and number and value >= 0 and value == int(value):
        return int(value)
    if name in ("mixup_alpha", "cutmix_alpha") and number and value >= 0:
        return float(value)
    if name in ("mix_prob", "switch_prob") and number and 0 <= value <= 1:
        return float(value)
    if name == "flip" and isinstance(value, bool):
        return value
    if name == "mix_mode":
        if value in MIX_MODES:
            return value
        raise UserError(f"augment.mix_mode '{value}' is not a mixing mode; {_suggest(value, MIX_MODES)}")
    if name == "pad_mode":
        if value in _PAD_MODES:
            return value
        raise UserError(f"augment.pad_mode '{value}' is not a padding mode; {_suggest(value, _PAD_MODES)}")
    want = {"rotate_degrees": "a number of degrees in [0, 180]", "flip": "true or false",
            "crop_padding": "a whole number of pixels >= 0", "cutout": "a whole number of pixels >= 0",
            "mix_prob": "a probability in [0, 1]", "switch_prob": "a probability in [0, 1]"}
    raise UserError(f"augment.{name} must be {want.get(name, 'a number >= 0')}, got {value!r}; fix it in the config")


def resolve(cfg: "AugmentConfig | str | dict") -> AugmentConfig:
    """A config with every field set: the preset's values under the ones given. Bad input -> UserError."""
    fields = [f.name for f in dataclasses.fields(AugmentConfig)]
    if isinstance(cfg, str):
        cfg = AugmentConfig(preset=cfg)
    elif isinstance(cfg, dict):
        for key in cfg:
            if key not in fields:
                raise UserError(f"unknown augment key '{key}'; {_suggest(key, fields)}")
        cfg = AugmentConfig(**cfg)
    elif not isinstance(cfg, AugmentConfig):
        raise UserError(f"augment must be a preset name or a mapping of {', '.join(fields)}; got {cfg!r}")
    cfg = dataclasses.replace(cfg, preset=RENAMED.get(cfg.preset, cfg.preset))
    if cfg.preset not in PRESETS:
        raise UserError(f"unknown augment preset '{cfg.preset}'; {_suggest(cfg.preset, PRESETS)}")
    base = PRESETS[cfg.preset]
    values = {}
    for name in fields[1:]:
        value = getattr(cfg, name)
        values[name] = _check(name, getattr(base, name) if value is None else value)
    return AugmentConfig(preset=cfg.preset, **values)


def _reflect(i, n):
    """Index i in [-(n-1), 2(n-1)] reflected into [0, n) without repeating the edge, as F.pad 'reflect'."""
    return (n - 1) - ((n - 1) - i.abs()).abs()


def geometry(images, angle=None, flip=None, offset=None, padding=0, pad_mode="zero"):
    """Rotate (degrees, counter-clockwise), then flip, then crop H x W at `offset` from the padded image.

    angle: float (N,) or None; flip: bool (N,) or None; offset: int (N, 2) = (top, left) in [0, 2 * padding].
    Each output pixel reads one source pixel or the zero fill: one uint8 gather.
    """
    n, c, h, w = images.shape
    dev = images.device
    yy = torch.arange(h, device=dev, dtype=torch.float32).view(1, h, 1).expand(n, h, 1)
    xx = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, w).expand(n, 1, w)
    if offset is not None:  # output (y, x) reads the flipped image at (y + top - pad, x + left - pad)
        yy = yy + (offset[:, :1] - padding).view(n, 1, 1)
        xx = xx + (offset[:, 1:] - padding).view(n, 1, 1)
        if pad_mode == "reflect":
            yy, xx = _reflect(yy, h), _reflect(xx, w)
        else:  # send padding far away: out of bounds before and after any rotation (it keeps distances)
            yy = yy.masked_fill((yy < 0) | (yy >= h), -1e6)
            xx = xx.masked_fill((xx < 0) | (xx >= w), -1e6)
    if flip is not None:
        xx = torch.where(flip.view(n, 1, 1), w - 1 - xx, xx)
    if angle is not None:
        # PIL's Image.rotate: inverse map of the pixel centre about (w/2, h/2), floor = its nearest
        # neighbour (Pillow Geometry.c affine_transform); torchvision's tensor rotate uses the same centre.
        t = torch.deg2rad(angle.float()).view(n, 1, 1)
        cos, sin = t.cos(), t.sin()
        u, v = xx + (0.5 - w / 2), yy + (0.5 - h / 2)
        xx = ((cos * u + w / 2) - sin * v).floor_()
        yy = ((sin * u) + (cos * v + h / 2)).floor_()
    if angle is not None or (offset is not None and pad_mode == "zero"):
        # a one-pixel zero border takes every read that falls outside the image
        images = torch.nn.functional.pad(images, (1, 1, 1, 1))
        yy, xx = yy.clamp(-1, h).add_(1), xx.clamp(-1, w).add_(1)
    # one gather through an (n, 1, h*w) index: on CPU several times faster than a row gather and a column
    # gather through broadcast indices; float32 is exact for these indices
    index = torch.add(yy * images.shape[-1], xx).long().view(n, 1, h * w)
    return images.reshape(n, c, -1).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def _gray(x, out=None):
    """PIL's convert("L") on the 0..255 scale: (299 R + 587 G + 114 B) / 1000 rounded, in 16-bit fixed point.

    Elementwise on purpose (no einsum) so autocast cannot drop it to bf16; exact in float32 (< 2**24)."""
    s = torch.mul(x[:, 0:1], 19595.0, out=out)
    s.add_(x[:, 1:2], alpha=38470.0).add_(x[:, 2:3], alpha=7471.0).add_(32768.0)
    return s.mul_(1.0 / 65536.0).floor_()


def color_jitter(images, factors, order):
    """uint8 N x 3 x H x W -> float32 with integer values in 0..255, each image jittered in its own order.

    factors: (N, 3) brightness, contrast, saturation. order: long (N, k), the op (0, 1, 2) at each of k
    stages. Each op is PIL's ImageEnhance: blend(degenerate, image, f) = d + f * (x - d), clipped and
    truncated to uint8 values (Pillow Blend.c); d is 0, the mean grey, or the pixel's grey.
    """
    x = images.to(torch.float32, copy=True)
    gray = torch.empty_like(x[:, :1])  # one buffer for every stage
    for k in range(order.shape[1]):
        op = order[:, k].view(-1, 1, 1, 1)
        f = factors.gather(1, order[:, k:k + 1]).view(-1, 1, 1, 1)
        _gray(x, out=gray)
        mean = (gray.mean(dim=(1, 2, 3), keepdim=True) + 0.5).floor_()  # ImageEnhance.Contrast's int(m + .5)
        d = gray.mul_(op == 2).add_(mean * (op == 1))
        x.sub_(d).mul_(f).add_(d).clamp_(0.0, 255.0).floor_()  # in place: this loop owns x
    return x


def cutout(x, size, centre):
    """Zero a size x size square centred at centre (N, 2) = (y, x), clipped at the border (DeVries & Taylor)."""
    n, _, h, w = x.shape
    lo = centre - size // 2
    hi = lo + size
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= lo[:, :1, None]) & (ys < hi[:, :1, None]) & (xs >= lo[:, 1:, None]) & (xs < hi[:, 1:, None])
    return x.masked_fill_(inside.unsqueeze(1), 0.0)


def build_augment(preset_or_config, mean, std):
    """fn(uint8 N x 3 x H x W, generator=None) -> augmented, normalised float32 batch on the same device.

    With a generator the parameters are drawn on the generator's device and moved to the batch's."""
    cfg = resolve(preset_or_config)
    strengths = [cfg.brightness, cfg.contrast, cfg.saturation]
    jitter_ops = [i for i, s in enumerate(strengths) if s > 0]
    lows = torch.tensor([max(0.0, 1.0 - s) for s in strengths])
    highs = torch.tensor([1.0 + s for s in strengths])
    constants = _on_device([*_scale_shift(mean, std), lows, highs - lows, torch.tensor(jitter_ops, dtype=torch.long)])
    channels = constants("cpu")[0].shape[1]
    geometric = cfg.rotate_degrees > 0 or cfg.flip or cfg.crop_padding > 0
    p = cfg.crop_padding

    def augment(images, generator=None):
        _check_batch(images, channels)
        n, c, h, w = images.shape
        if (jitter_ops and c != 3) or (cfg.pad_mode == "reflect" and p >= min(h, w)):
            raise ValueError(f"augment {cfg} cannot take a batch of shape {tuple(images.shape)}")
        dev = images.device
        scale, shift, low, width, ops = constants(dev)
        if not geometric and not jitter_ops and not cfg.cutout:
            return images.float().mul_(scale).add_(shift)
        gen_dev = generator.device if generator is not None else dev
        u = torch.rand(n, _UNIFORMS, generator=generator, device=gen_dev).to(dev)
        if geometric:
            images = geometry(
                images,
                angle=(2 * u[:, 0] - 1) * cfg.rotate_degrees if cfg.rotate_degrees > 0 else None,
                flip=u[:, 1] < 0.5 if cfg.flip else None,
                offset=(u[:, 2:4] * (2 * p + 1)).long().clamp_(max=2 * p) if p > 0 else None,
                padding=p,
                pad_mode=cfg.pad_mode,
            )
        if jitter_ops:
            factors = low + u[:, 4:7] * width
            # a uniform random permutation of the enabled ops per image, as ColorJitter's randperm(4)
            order = ops[u[:, 7:7 + len(jitter_ops)].argsort(dim=1)]
            x = color_jitter(images, factors, order)
        else:
            x = images.float()
        x = x.mul_(scale).add_(shift)  # in place: x is this call's own buffer
        if cfg.cutout > 0:
            x = cutout(x, cfg.cutout, torch.stack([u[:, 10] * h, u[:, 11] * w], dim=1).long())
        return x

    augment.config = cfg
    return augment
