"""The fast recipe's parts on CPU: the fast presets train, the EMA of the weights is what gets evaluated and saved,
EMA and TTA match hand computations, a held-out split selects the model, and every new option is reachable from the
command line. Runs use a few hundred 8x8 synthetic images.
"""
import dataclasses
import json
import sys

import pytest
import torch
import yaml

from resnet_lite.config import resolve_config
from resnet_lite.models.tta import TTA
from resnet_lite.train import main
from resnet_lite.training.ema import EMAConfig, build_ema, ema_decay, update_ema
from resnet_lite.training.optim import lr_factor, warmup_note

from support import REPO
from support.fast import FAST_PRESETS, TINY, rows_of

sys.path.insert(0, str(REPO / "benchmarks"))
import time_to_accuracy  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_wandb")


@pytest.mark.parametrize("name", FAST_PRESETS)
def test_fast_preset_is_the_recipe_on_the_reports_network(name):
    cfg = resolve_config(name)
    assert cfg.model == "lite_r4b2" and cfg.drop_rate == 0.0  # the architecture untouched
    assert cfg.mixed_precision == "auto" and cfg.channels_last and cfg.compile and cfg.drop_last
    assert 10_000 % cfg.eval_batch_size == 0
    assert cfg.optim.lr / cfg.batch_size == pytest.approx(0.4 / 512)  # Page's lr per image, whatever the batch
    assert (cfg.optim.name, cfg.optim.nesterov, cfg.optim.momentum) == ("sgd", True, 0.9) and cfg.optim.weight_decay > 0
    assert cfg.schedule.name == "onecycle" and cfg.schedule.warmup_epochs > 0 and cfg.schedule.final_lr_fraction == 0
    assert cfg.label_smoothing == 0.2 and cfg.ema.enabled and cfg.tta == 2 and cfg.augment.preset == "fast"


@pytest.mark.parametrize("name", FAST_PRESETS)
def test_a_full_length_fast_run_keeps_its_schedule_exactly(name):
    """The cap leaves a preset run at its own length alone: the same lr at every step as with no cap."""
    preset = resolve_config(name)
    cfg, steps_per_epoch, epochs = preset.schedule, 50_000 // preset.batch_size, preset.epochs
    uncapped = dataclasses.replace(cfg, warmup_max_fraction=1)
    capped, whole = (lr_factor(c, steps_per_epoch, epochs) for c in (cfg, uncapped))
    steps = range(steps_per_epoch * epochs + 1)
    assert [capped(s) for s in steps] == [whole(s) for s in steps]
    assert warmup_note(cfg, steps_per_epoch, epochs) is None


# ---------------------------------------------------------------------------------------------- EMA


def test_ema_update_matches_a_hand_computation():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    cfg = EMAConfig(enabled=True, decay=0.9, every=2)
    ema = build_ema(cfg, model)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(1, 7):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model(torch.randn(8, 3))  # moves the BatchNorm running statistics and its batch count
        update_ema(ema, model, cfg, step)
        if step % 2 == 0:  # every 2 steps, with decay 0.9 ** 2
            for k, v in model.state_dict().items():
                expected[k] = 0.81 * expected[k] + 0.19 * v if v.is_floating_point() else v.clone()
        for k, v in ema.module.state_dict().items():
            assert torch.allclose(v, expected[k].to(v.dtype), atol=1e-6), (step, k)
    assert ema.module.state_dict()["1.num_batches_tracked"] == 6
    assert not torch.allclose(ema.module[0].weight, model[0].weight)


def test_ema_can_copy_buffers_and_warms_up():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    cfg = EMAConfig(enabled=True, decay=0.5, copy_buffers=True)
    ema = build_ema(cfg, model)
    model(torch.randn(8, 3))
    with torch.no_grad():
        model[0].weight.add_(1.0)
    before = ema.module[0].weight.clone()
    update_ema(ema, model, cfg, 1)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)  # copied
    assert torch.allclose(ema.module[0].weight, 0.5 * before + 0.5 * model[0].weight)  # averaged

    warm = EMAConfig(enabled=True, decay=0.999, warmup_power=0.75, every=3)
    assert ema_decay(warm, 1) == pytest.approx((1 - 2 ** -0.75) ** 3)
    assert ema_decay(warm, 10**6) == pytest.approx(0.999 ** 3)  # the warm-up ends at the configured decay
    assert build_ema(EMAConfig(), model) is None
    update_ema(None, model, cfg, 1)  # disabled: a no-op


def test_ema_ramp_is_airbenchs_cubic_schedule():
    """ramp_power scales each update's decay by (step / total) ** p: the average is the weights themselves at the
    start and spans decay ** every per update only at the very end (airbench94: 0.95 ** 5 * (t / T) ** 3)."""
    cfg = EMAConfig(enabled=True, decay=0.95, every=5, ramp_power=3)
    assert ema_decay(cfg, 0, 600) == 0.0
    assert ema_decay(cfg, 300, 600) == pytest.approx(0.95 ** 5 * 0.5 ** 3)
    assert ema_decay(cfg, 600, 600) == pytest.approx(0.95 ** 5)
    assert ema_decay(cfg, 900, 600) == pytest.approx(0.95 ** 5)  # past the end (a shortened resume): no more
    with pytest.raises(ValueError):
        ema_decay(cfg, 10)  # a ramp needs the run's length
    model = torch.nn.Linear(3, 4)
    ema = build_ema(cfg, model)
    with torch.no_grad():
        model.weight.add_(1.0)
    update_ema(ema, model, cfg, 5, 600)  # decay 0.95 ** 5 * (1 / 120) ** 3: the average all but jumps to the weights
    assert torch.allclose(ema.module.weight, model.weight, atol=1e-5)


class Recorder(torch.nn.Module):
    """A fixed non-linear model that remembers the memory format of what it was given."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 5, 3, padding=1)
        self.formats = []

    def forward(self, x):
        self.formats.append(x.is_contiguous(memory_format=torch.channels_last))
        return self.conv(x).relu().mean(dim=(2, 3)) + x[:, :, 0, :].mean(-1).sum(1, keepdim=True)


def _shift(x, dy, dx):
    """x shifted so output (i, j) reads input (i + dy, j + dx), reflected at the border, by explicit indices."""
    h, w = x.shape[-2:]
    ry = [abs(i + dy) if i + dy < h else 2 * (h - 1) - (i + dy) for i in range(h)]
    rx = [abs(j + dx) if j + dx < w else 2 * (w - 1) - (j + dx) for j in range(w)]
    return x[:, :, ry][:, :, :, rx]


def test_tta_matches_a_hand_computation():
    torch.manual_seed(0)
    model, x = Recorder(), torch.randn(4, 3, 6, 6)

    def mirror(v):
        return (model(v) + model(v.flip(3))) / 2

    with torch.no_grad():
        assert torch.equal(TTA(model, 0)(x), model(x))
        assert torch.allclose(TTA(model, 1)(x), mirror(x), atol=1e-6)
        hand = 0.5 * mirror(x) + 0.25 * mirror(_shift(x, -1, -1)) + 0.25 * mirror(_shift(x, 1, 1))
        assert torch.allclose(TTA(model, 2)(x), hand, atol=1e-6)
        assert not torch.allclose(hand, mirror(x), atol=1e-3)  # the translated views count

        model.formats.clear()
        TTA(model, 2)(x.contiguous(memory_format=torch.channels_last))
        assert model.formats == [True] * 6  # every view keeps the input's layout
    with pytest.raises(Exception, match="tta=3 is not one of 0, 1, 2"):
        TTA(model, 3)


def test_every_new_option_is_reachable_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    main(["--output-dir", str(out), *TINY, "epochs=1", "tta=1", "drop_last=true", "data.holdout=32",
          "label_smoothing=0.2", "ema.enabled=true", "ema.decay=0.9", "ema.every=2", "ema.warmup_power=0.75",
          "ema.ramp_power=3", "ema.copy_buffers=true", "ema.eval_raw=false"])
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["tta"], cfg["drop_last"], cfg["data"]["holdout"], cfg["label_smoothing"]) == (1, True, 32, 0.2)
    assert cfg["ema"] == {"enabled": True, "decay": 0.9, "every": 2, "warmup_power": 0.75, "ramp_power": 3.0,
                          "copy_buffers": True, "eval_raw": False}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3  # (256 - 32) // 64 with drop_last
    assert "final_test_acc_raw" not in summary and "test_acc_raw" not in rows_of(out)[0]  # eval_raw=false

    capsys.readouterr()
    main(["--list"])
    listing = capsys.readouterr().out
    assert "fast " in listing and "fast94" in listing and "onecycle" in listing


def test_time_to_targets_reads_the_first_epoch_at_or_over_each_target():
    rows = [{"epoch": 1, "test_acc": 0.90, "images_per_second": 100.0},
            {"epoch": 2, "test_acc": 0.9147, "images_per_second": 200.0},
            {"epoch": 3, "test_acc": 0.93, "images_per_second": 100.0},
            {"epoch": 4, "test_acc": 0.92, "images_per_second": 100.0}]
    seconds = time_to_accuracy.train_seconds(rows, [1000] * 4)
    assert seconds == pytest.approx([10.0, 5.0, 10.0, 10.0])
    reached = time_to_accuracy.time_to_targets(rows, seconds, (0.9147, 0.94))
    assert reached == {"0.9147": {"epoch": 2, "seconds": pytest.approx(15.0)}, "0.94": None}
