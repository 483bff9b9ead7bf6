"""Batched augmentation: each op against a hand computation or PIL itself, and the `report` preset against
torchvision's per-image PIL transforms in distribution (two-sample Kolmogorov-Smirnov distances, with a
mis-parameterised control beside each check to show the tolerance would catch it)."""
import itertools

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from resnet_lite.data import augment as A
from resnet_lite.data.images import build_normalize
from resnet_lite.errors import UserError

MEAN = (0.4914, 0.4821, 0.4465)
STD = (0.2470, 0.2434, 0.2615)
# KS distance between two samples of 2,000: the 0.1% critical value is 1.95 * sqrt(2 / 2000) = 0.062
KS_TOL = 0.07


def ks(a, b):
    a, b = a.flatten().sort().values, b.flatten().sort().values
    both = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, both, right=True) / len(a)
    cdf_b = torch.searchsorted(b, both, right=True) / len(b)
    return (cdf_a - cdf_b).abs().max().item()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def only(**fields):
    """A config that does nothing but the given ops."""
    return A.AugmentConfig(preset="none", **fields)


def structured():
    """Ramps in red (left to right) and green (top to bottom), a blue horizontal bar off centre."""
    y, x = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    bar = (y >= 6) & (y < 10) & (x >= 8) & (x < 28)
    r = torch.where(bar, 20, 40 + 6 * x)
    b = torch.where(bar, 230, torch.full_like(x, 60))
    return torch.stack([r, 30 + 5 * y, b]).to(torch.uint8)


def coords():
    """Red = column + 1, green = row + 1: any output pixel says where it was read from."""
    y, x = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    return torch.stack([x + 1, y + 1, torch.full_like(x, 128)]).to(torch.uint8)


def batch(img, n):
    return img.expand(n, *img.shape).contiguous()


def pil(img):
    return Image.fromarray(img.permute(1, 2, 0).numpy())


def tensor(p):
    return torch.from_numpy(np.array(p)).permute(2, 0, 1)


def per_image(transform, img, n):
    """torchvision applied image by image, as the seed's DataLoader did; uint8 N x 3 x H x W."""
    torch.manual_seed(0)
    src = pil(img)
    return torch.stack([tensor(transform(src)) for _ in range(n)])


def denorm(x):
    """Normalised float back to the 0..255 scale, rounded: exact for our outputs and for ToTensor's."""
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1)
    return ((x * s + m) * 255).round()


# ---------------------------------------------------------------- config


def test_presets_are_fully_resolved():
    for name, cfg in A.PRESETS.items():
        assert cfg.preset == name
        assert A.resolve(name) == cfg
        assert all(v is not None for v in vars(cfg).values())
    report = A.PRESETS["report"]
    assert (report.rotate_degrees, report.flip, report.crop_padding, report.pad_mode) == (5.0, True, 4, "zero")
    assert (report.brightness, report.contrast, report.saturation) == (0.2, 0.2, 0.2)
    assert A.resolve("seed") == report  # its name before "seed" was kept for the random seed
    fast = A.PRESETS["fast"]
    assert (fast.rotate_degrees, fast.flip, fast.crop_padding, fast.pad_mode) == (0.0, True, 2, "reflect")


def test_resolve_overrides_preset_values():
    cfg = A.resolve({"preset": "fast", "cutout": 12, "rotate_degrees": 3})
    assert cfg.cutout == 12 and cfg.rotate_degrees == 3.0 and isinstance(cfg.rotate_degrees, float)
    assert cfg.crop_padding == 2 and cfg.pad_mode == "reflect"
    assert A.resolve(A.AugmentConfig(preset="none", flip=True)).flip is True
    assert A.resolve({}) == A.PRESETS["report"]


@pytest.mark.parametrize(
    "cfg, words",
    [
        ("reprot", ["'reprot'", "did you mean 'report'"]),
        ({"preset": "fats"}, ["'fats'", "'fast'"]),
        ({"rotate": 5}, ["'rotate'", "'rotate_degrees'"]),
        ({"pad_mode": "reflection"}, ["pad_mode", "'reflect'"]),
        ({"brightness": -0.1}, ["augment.brightness", "-0.1"]),
        ({"flip": "yes"}, ["augment.flip", "'yes'"]),
        ({"crop_padding": 2.5}, ["augment.crop_padding", "2.5"]),
        ({"rotate_degrees": 270}, ["augment.rotate_degrees", "270"]),
        ({"cutout": True}, ["augment.cutout"]),
        (42, ["preset name or a mapping"]),
    ],
)
def test_bad_config_is_a_one_line_user_error(cfg, words):
    with pytest.raises(UserError) as e:
        A.build_augment(cfg, MEAN, STD)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("preset", sorted(A.PRESETS))
def test_output_dtype_shape_device_and_input_untouched(preset):
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=gen())
    before = x.clone()
    out = A.build_augment(preset, MEAN, STD)(x, gen())
    assert out.dtype == torch.float32 and out.shape == x.shape and out.device == x.device
    assert torch.isfinite(out).all()
    assert torch.equal(x, before)


def test_rejects_anything_but_a_uint8_batch():
    fn = A.build_augment("report", MEAN, STD)
    with pytest.raises(ValueError, match="uint8"):
        fn(torch.rand(4, 3, 32, 32))
    with pytest.raises(ValueError, match="uint8"):
        build_normalize(MEAN, STD)(torch.zeros(4, 1, 32, 32, dtype=torch.uint8))


def test_normalize_matches_the_formula_and_none_is_normalize_only():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=gen())
    want = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(build_normalize(MEAN, STD)(x), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(A.build_augment("none", MEAN, STD)(x, gen()), want, atol=1e-5, rtol=0)


def test_deterministic_for_a_generator():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=gen())
    fn = A.build_augment(A.AugmentConfig(preset="report", cutout=8), MEAN, STD)
    assert torch.equal(fn(x, gen(7)), fn(x, gen(7)))
    assert not torch.equal(fn(x, gen(7)), fn(x, gen(8)))
    torch.manual_seed(3)
    a = fn(x)
    torch.manual_seed(3)
    assert torch.equal(a, fn(x))


def test_every_sample_draws_its_own_parameters():
    n = 256
    out = A.build_augment("report", MEAN, STD)(batch(structured(), n), gen())
    assert len(torch.unique(out.flatten(1), dim=0)) == n
    # one op at a time: within a batch of identical images each op takes several values
    src = batch(coords(), n)
    flips = denorm(A.build_augment(only(flip=True), MEAN, STD)(src, gen()))[:, 0, 0, 0]
    assert set(flips.tolist()) == {1.0, 32.0}
    crops = denorm(A.build_augment(only(crop_padding=4), MEAN, STD)(src, gen()))[:, :2, 4, 4]
    assert len(torch.unique(crops, dim=0)) > 60  # of 81; 256 draws leave about 3 unseen


# ---------------------------------------------------------------- each op by hand


def test_flip_equals_torch_flip_at_half_rate():
    n = 4000
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=gen())
    out = A.build_augment(only(flip=True), MEAN, STD)(x, gen(1))
    norm = build_normalize(MEAN, STD)
    same = (out == norm(x)).flatten(1).all(1)
    flipped = (out == norm(x.flip(-1))).flatten(1).all(1)
    assert (same ^ flipped).all()
    rate = flipped.float().mean().item()
    tv_rate = (per_image(T.RandomHorizontalFlip(), coords(), 2000)[:, 0, 0, 0] == 32).float().mean().item()
    # binomial sd at p = 0.5: 0.008 for 4,000 draws, 0.011 for 2,000
    assert abs(rate - 0.5) < 0.035 and abs(tv_rate - 0.5) < 0.045


@pytest.mark.parametrize("pad_mode", ["zero", "reflect"])
def test_crop_equals_slicing_at_the_drawn_offset(pad_mode):
    n, p = 2000, 4
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen())
    x[:, :2] = coords()[:2]  # red/green say where each pixel came from
    out = denorm(A.build_augment(only(crop_padding=p, pad_mode=pad_mode), MEAN, STD)(x, gen(1))).to(torch.uint8)
    # output (4, 4) reads padded (4 + top, 4 + left) = source (top, left): always inside the image
    left, top = out[:, 0, 4, 4].long() - 1, out[:, 1, 4, 4].long() - 1
    assert left.min() == 0 and left.max() == 2 * p and top.min() == 0 and top.max() == 2 * p
    padded = torch.nn.functional.pad(x, (p,) * 4, mode="constant" if pad_mode == "zero" else "reflect")
    for i in range(0, n, 97):
        assert torch.equal(out[i], padded[i, :, top[i]:top[i] + 32, left[i]:left[i] + 32])
    # offsets uniform over the 81 cells: chi-square with 80 degrees of freedom, 0.01% point 132
    counts = torch.bincount(top * 9 + left, minlength=81).float()
    assert ((counts - n / 81) ** 2 / (n / 81)).sum() < 132
    if pad_mode == "zero":  # torchvision's RandomCrop(32, padding=4) draws the same offsets
        tv = per_image(T.RandomCrop(32, padding=p), coords(), n)[:, :2, 4, 4].long() - 1
        assert ks(left, tv[:, 0]) < KS_TOL and ks(top, tv[:, 1]) < KS_TOL
        assert ks(left.clamp(1, 7), tv[:, 0]) > KS_TOL  # a range one pixel short is caught


def test_zero_rotation_is_identity_and_small_rotations_match_pil():
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=gen())
    assert torch.equal(A.geometry(x, angle=torch.zeros(32)), x)
    angles = torch.linspace(-30, 30, 32)
    ours = A.geometry(x, angle=angles)
    ref = torch.stack([tensor(TF.rotate(pil(im), float(a), TF.InterpolationMode.NEAREST, fill=0))
                       for im, a in zip(x, angles, strict=True)])
    # nearest-neighbour ties can round the other way in float32 vs Pillow's doubles
    assert (ours != ref).any(1).float().mean() < 1e-3
    assert (A.geometry(x, angle=-angles) != ref).any(1).float().mean() > 0.2  # direction matters


def test_flip_then_crop_then_rotate_compose_in_the_seed_order():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=gen())
    angle, flip = torch.linspace(-5, 5, 8), torch.tensor([True, False] * 4)
    offset = torch.randint(0, 9, (8, 2), generator=gen())
    out = A.geometry(x, angle=angle, flip=flip, offset=offset, padding=4)
    for i in range(8):
        im = TF.rotate(pil(x[i]), float(angle[i]), TF.InterpolationMode.NEAREST, fill=0)
        im = TF.hflip(im) if flip[i] else im
        im = TF.crop(TF.pad(im, 4), int(offset[i, 0]), int(offset[i, 1]), 32, 32)
        assert (out[i] != tensor(im)).any(0).float().mean() < 5e-3


def test_rotation_angles_match_random_rotation_in_distribution():
    n = 2000
    img = structured()

    def tilt_and_fill(u8):
        x = u8.float()
        w = (x[:, 2] - x[:, 0]).clamp(min=0) + 1e-3  # weight on the blue bar
        ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        cx = (w * xs).sum((1, 2)) / w.sum((1, 2))
        cy = (w * ys).sum((1, 2)) / w.sum((1, 2))
        tilt = (w * (xs - cx[:, None, None]) * (ys - cy[:, None, None])).sum((1, 2)) / w.sum((1, 2))
        return tilt, (u8.amax(1) == 0).float().mean((1, 2))

    tv_tilt, tv_fill = tilt_and_fill(per_image(T.RandomRotation(5), img, n))
    for degrees, agrees in [(5, True), (2.5, False), (10, False)]:
        out = denorm(A.build_augment(only(rotate_degrees=degrees), MEAN, STD)(batch(img, n), gen(1)))
        tilt, fill = tilt_and_fill(out.to(torch.uint8))
        assert (max(ks(tilt, tv_tilt), ks(fill, tv_fill)) < KS_TOL) == agrees, degrees


def test_color_jitter_equals_pil_image_enhance_in_every_order():
    n = 24
    x = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=gen())
    factors = torch.empty(n, 3).uniform_(0.5, 1.5, generator=gen(1))
    enhance = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation]
    for perm in itertools.permutations(range(3)):
        ours = A.color_jitter(x, factors, torch.tensor(perm).expand(n, 3))
        ref = []
        for im, f in zip(x, factors, strict=True):
            p = pil(im)
            for op in perm:
                p = enhance[op](p, float(f[op]))
            ref.append(tensor(p))
        assert ours.dtype == torch.float32
        assert torch.equal(ours, torch.stack(ref).float()), perm


def test_jitter_draws_factors_and_order_per_sample_as_documented():
    # the documented layout of torch.rand(N, 12): factors in columns 4-6, order keys in 7-9
    n = 64
    x = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=gen())
    out = A.build_augment(only(brightness=0.2, contrast=0.3, saturation=0.4), MEAN, STD)(x, gen(5))
    u = torch.rand(n, 12, generator=gen(5))
    factors = torch.tensor([0.8, 0.7, 0.6]) + u[:, 4:7] * torch.tensor([0.4, 0.6, 0.8])
    order = u[:, 7:10].argsort(dim=1)
    assert len(torch.unique(order, dim=0)) == 6
    want = build_normalize(MEAN, STD)(A.color_jitter(x, factors, order).to(torch.uint8))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


# factor recovered from one uniform image: brightness on grey 150, contrast on a 100 | 200 split
# (mean 150), saturation on (200, 100, 50) whose PIL grey is 124
def _brightness_factor(u8):
    return u8[:, 0].float().mean((1, 2)) / 150


def _contrast_factor(u8):
    return (u8[:, 0, :, 16:].float().mean((1, 2)) - u8[:, 0, :, :16].float().mean((1, 2))) / 100


def _saturation_factor(u8):
    return (u8[:, 0].float().mean((1, 2)) - u8[:, 2].float().mean((1, 2))) / 150


def _jitter_image(op):
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    if op == "brightness":
        img[:] = 150
    elif op == "contrast":
        img[:, :, :16], img[:, :, 16:] = 100, 200
    else:
        img[0], img[1], img[2] = 200, 100, 50
    return img


@pytest.mark.parametrize("op, factor", [("brightness", _brightness_factor), ("contrast", _contrast_factor),
                                        ("saturation", _saturation_factor)])
def test_jitter_factor_ranges_match_color_jitter(op, factor):
    n = 2000
    img = _jitter_image(op)
    tv = factor(per_image(T.ColorJitter(**{op: 0.2}), img, n))
    for strength, agrees in [(0.2, True), (0.3, False), (0.1, False)]:
        out = denorm(A.build_augment(only(**{op: strength}), MEAN, STD)(batch(img, n), gen(1)))
        f = factor(out.to(torch.uint8))
        lo_ok = abs(f.min().item() - (1 - strength)) < 0.02 and abs(f.max().item() - (1 + strength)) < 0.02
        assert (ks(f, tv) < KS_TOL) == agrees and lo_ok, (op, strength)
    assert abs(tv.min().item() - 0.8) < 0.02 and abs(tv.max().item() - 1.2) < 0.02


def test_cutout_zeroes_one_square_per_sample():
    n, size = 256, 8
    x = torch.randint(1, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen())
    out = A.build_augment(only(cutout=size), MEAN, STD)(x, gen(1))
    norm = build_normalize(MEAN, STD)(x)
    changed = (out != norm).any(1)
    assert (out[changed.unsqueeze(1).expand_as(out)] == 0).all()
    rows, cols = changed.any(2), changed.any(1)
    area = changed.sum((1, 2))
    assert torch.equal(area, rows.sum(1) * cols.sum(1))  # a rectangle
    assert (area > 0).all() and (area <= size * size).all() and (area == size * size).float().mean() > 0.4
    assert len(torch.unique(changed.flatten(1).float().argmax(1))) > 50


# ---------------------------------------------------------------- the report preset in distribution


def _summary(u8):
    x = u8.float()
    r, b = x[:, 0], x[:, 2]
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    w = (b - r).clamp(min=0) + 1e-3
    return {
        "mean": x.mean((1, 2, 3)),
        "std": x.std((1, 2, 3)),
        "dark": (x.amax(1) < 8).float().mean((1, 2)),
        "spread": (x.amax(1) - x.amin(1)).mean((1, 2)),
        "bar_x": (w * xs).sum((1, 2)) / w.sum((1, 2)),
        "bar_y": (w * ys).sum((1, 2)) / w.sum((1, 2)),
        "red_x": (r * xs).sum((1, 2)) / r.sum((1, 2)).clamp(min=1),
    }


def test_report_preset_matches_torchvision_per_image_pipeline_in_distribution():
    n = 2000
    img = structured()
    seed_tf = T.Compose([T.RandomRotation(5), T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4),
                         T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)])
    tv = _summary(per_image(seed_tf, img, n))

    def worst(cfg):
        ours = _summary(denorm(A.build_augment(cfg, MEAN, STD)(batch(img, n), gen(1))))
        return max(ks(ours[k], tv[k]) for k in tv)

    assert worst("report") < KS_TOL
    for wrong in [dict(rotate_degrees=0), dict(flip=False), dict(crop_padding=0), dict(crop_padding=2),
                  dict(pad_mode="reflect"), dict(brightness=0), dict(contrast=0), dict(brightness=0.4)]:
        assert worst(A.AugmentConfig(preset="report", **wrong)) > KS_TOL, wrong


# ---------------------------------------------------------------- compile and mixed precision


def test_autocast_bf16_changes_nothing():
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=gen())
    fn = A.build_augment("report", MEAN, STD)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(x, gen(3))
    assert out.dtype == torch.float32
    assert torch.equal(out, fn(x, gen(3)))
