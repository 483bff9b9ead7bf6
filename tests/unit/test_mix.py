"""MixUp and CutMix on the device (resnet_lite.data.mix) against timm's own Mixup: for the same draw (lam, kind and box
centre, handed to timm in place of its numpy randomness) the same mixed images and the same targets, in both modes; the
draws' distribution; the loss; exact resume of a mixing run killed mid-epoch; the settings' one-line errors."""

import numpy as np
import pytest
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from resnet_lite.data.augment import resolve
from resnet_lite.data.mix import apply_mix, build_mix, draw_mix, soft_target_loss
from resnet_lite.errors import UserError

CLASSES, SMOOTHING = 10, 0.1


def _config(mode, mixup, cutmix, prob=0.6, switch=0.5):
    return resolve({"preset": "none", "mixup_alpha": mixup, "cutmix_alpha": cutmix, "mix_prob": prob,
                    "switch_prob": switch, "mix_mode": mode})


def _timm_with_our_draw(cfg, draw, x, labels, monkeypatch):
    """timm's Mixup on (x, labels), its random parameters and rand_bbox's centres replaced by `draw`'s."""
    mixup = Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mix_prob,
                  switch_prob=cfg.switch_prob, mode=cfg.mix_mode, label_smoothing=SMOOTHING, num_classes=CLASSES)
    lam, cutmix, centre = draw.lam.numpy().copy(), draw.cutmix.numpy().copy(), draw.centre.numpy()
    if cfg.mix_mode == "batch":
        monkeypatch.setattr(mixup, "_params_per_batch", lambda: (float(lam[0]), bool(cutmix[0])))
        boxed = [0] if lam[0] != 1 and cutmix[0] else []
    else:
        monkeypatch.setattr(mixup, "_params_per_elem", lambda size: (lam, cutmix))
        boxed = [i for i in range(len(lam)) if lam[i] != 1 and cutmix[i]]  # timm skips the unmixed
    centres = iter(int(v) for i in boxed for v in centre[i])  # rand_bbox draws the centre's y, then its x
    monkeypatch.setattr(np.random, "randint", lambda low, high, size=None: next(centres))
    return mixup(x.clone(), labels)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)], ids=["mixup", "cutmix", "both"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_the_same_images_and_targets_as_timms_mixup_for_the_same_draw(mode, mixup, cutmix, seed, monkeypatch):
    cfg = _config(mode, mixup, cutmix)
    n, h, w = 8, 13, 16  # not square, odd: boxes are clipped at the border and lam corrected for it
    x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(100 + seed))
    labels = torch.randint(0, CLASSES, (n,), generator=torch.Generator().manual_seed(200 + seed))
    draw = draw_mix(cfg, n, h, w, torch.Generator().manual_seed(seed))
    ours_x, ours_targets = apply_mix(x, labels, draw, CLASSES, SMOOTHING, per_batch=mode == "batch")
    timm_x, timm_targets = _timm_with_our_draw(cfg, draw, x, labels, monkeypatch)
    assert torch.equal(ours_x, timm_x)
    assert torch.equal(ours_targets, timm_targets)


def test_every_kind_of_draw_was_compared():
    """The draws above include mixed and unmixed images, and MixUp and CutMix ones."""
    draws = [draw_mix(_config("elem", 0.8, 1.0), 8, 13, 16, torch.Generator().manual_seed(s)) for s in range(3)]
    lam = torch.cat([d.lam for d in draws])
    cutmix = torch.cat([d.cutmix for d in draws])
    assert (lam == 1).any() and (lam < 1).any() and (cutmix & (lam < 1)).any() and (~cutmix & (lam < 1)).any()


def test_draws_follow_the_settings_distributions():
    n = 20000
    for mixup, cutmix, prob, switch in [(0.8, 1.0, 0.7, 0.3), (0.4, 0.0, 1.0, 0.5)]:
        draw = draw_mix(_config("elem", mixup, cutmix, prob, switch), n, 32, 32, torch.Generator().manual_seed(0))
        mixed = draw.lam < 1
        assert mixed.float().mean() == pytest.approx(prob, abs=0.015)
        kind = draw.cutmix[mixed].float().mean()
        assert kind == pytest.approx(switch if cutmix else 0.0, abs=0.015)
        for alpha, chosen in ((cutmix, draw.cutmix & mixed), (mixup, ~draw.cutmix & mixed)):
            if alpha:  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
                lam = draw.lam[chosen]
                assert lam.mean() == pytest.approx(0.5, abs=0.015)
                assert lam.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.06)
        assert ((draw.centre >= 0) & (draw.centre < 32)).all()
    once = draw_mix(_config("batch", 0.8, 1.0), 16, 32, 32, torch.Generator().manual_seed(3))
    assert (once.lam == once.lam[0]).all() and (once.centre == once.centre[0]).all()  # one draw for the batch


def test_the_generator_decides_everything():
    mix = build_mix(_config("elem", 0.8, 1.0), CLASSES, SMOOTHING)
    x, labels = torch.randn(8, 3, 16, 16), torch.arange(8)
    a = mix(x, labels, torch.Generator().manual_seed(5))
    b = mix(x, labels, torch.Generator().manual_seed(5))
    c = mix(x, labels, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])


def test_the_loss_is_timms_soft_target_cross_entropy_summed():
    logits, labels = torch.randn(8, CLASSES), torch.arange(8)
    _, targets = build_mix(_config("elem", 0.8, 1.0, prob=1.0), CLASSES, SMOOTHING)(
        torch.randn(8, 3, 8, 8), labels, torch.Generator().manual_seed(0))
    assert soft_target_loss(logits, targets) == pytest.approx(8 * SoftTargetCrossEntropy()(logits, targets).item(),
                                                              rel=1e-6)


def test_no_mixing_builds_nothing_and_settings_are_checked():
    assert build_mix(resolve("seed"), CLASSES) is None and build_mix(_config("batch", 0.8, 1.0, prob=0.0), 10) is None
    for bad, message in [({"mixup_alpha": -1}, "augment.mixup_alpha must be a number >= 0"),
                         ({"mix_prob": 1.5}, "augment.mix_prob must be a probability in [0, 1]"),
                         ({"mix_mode": "pair"}, "augment.mix_mode 'pair' is not a mixing mode")]:
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
            resolve({"preset": "seed", **bad})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixing_on_the_gpu_never_waits_for_it():
    """No host sync: torch's sync debug mode turns any into an error."""
    mix = build_mix(_config("elem", 0.8, 1.0), CLASSES, SMOOTHING)
    x, labels = torch.randn(64, 3, 32, 32, device="cuda"), torch.arange(64, device="cuda") % CLASSES
    generator = torch.Generator(device="cuda").manual_seed(0)
    mix(x, labels, generator)  # the first call's one-off setup
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mix(x, labels, generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
