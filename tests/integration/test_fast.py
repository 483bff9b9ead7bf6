"""The fast recipe's parts on CPU: the training runs and real processes. The rest, and what the file tests and why:
tests/unit/test_fast.py."""
import json
import math
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F

from resnet_lite.config import resolve_config
from resnet_lite.data.images import build_normalize
from resnet_lite.data.sources import DataConfig, load_data
from resnet_lite.models.lite import create_model
from resnet_lite.models.tta import TTA
from resnet_lite.outputs.checkpoint import list_checkpoints
from resnet_lite.outputs.weights import load_weights
from resnet_lite.train import main, train

from support import REPO
from support.fast import FAST_PRESETS, TINY, rows_of

sys.path.insert(0, str(REPO / "benchmarks"))
import ema_vs_raw  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_wandb")


def recomputed_test_loss(state, out, tta=0):
    """Mean test cross-entropy of weights `state` on the tiny run's test split, computed here, not by the trainer."""
    ds = load_data(DataConfig("synthetic", synthetic_train=256, synthetic_test=64, image_size=8))
    model = create_model("lite_r4b2", num_classes=10)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        logits = TTA(model, tta)(build_normalize(ds.mean, ds.std)(ds.test.images))
    return F.cross_entropy(logits, ds.test.labels).item()




# ---------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", FAST_PRESETS)
def test_fast_preset_trains_on_cpu(name, tmp_path):
    """The preset as shipped, shrunk to tiny data and without compile (minutes on a CPU): two optimizer steps."""
    out = tmp_path / "run"
    summary = train(resolve_config(name, overrides=[*TINY, "batch_size=96", "epochs=1", f"output_dir={out}"]))
    assert summary["steps"] == 2  # drop_last: 256 // 96 full batches
    assert summary["ema"] is True and summary["tta"] == 2 and summary["mixed_precision"] == "no"
    assert summary["params"] == 2_799_146 and 0.0 <= summary["final_test_acc"] <= 1.0
    assert math.isfinite(rows_of(out)[0]["train_loss"])


def test_a_one_epoch_run_of_a_fast_preset_completes_its_schedule(tmp_path, capsys):
    """`--variant fast --epochs 1`: the preset's 2.5-epoch warm-up used to fill the whole run, which ended at lr 0.7
    (of the 0.8 it then had) with a test loss in the thousands. The warm-up now takes at most a quarter of the run,
    and says so."""
    out = tmp_path / "run"  # batch 128 and lr 0.1: the preset's 256 and 0.2 scaled down together
    assert main(["--variant", "fast", "--epochs", "1", "--batch-size", "128", "--lr", "0.1", "--data", "synthetic",
                 "--output-dir", str(out), *TINY[2:4], "data.synthetic_train=2048", "compile=false",
                 "--wandb", "disabled"]) == 0
    (row,) = rows_of(out)
    assert row["step"] == 16 and row["lr"] == pytest.approx(0.1 / 12)  # the last of 12 steps down after 4 up
    assert row["test_loss"] < 2 * math.log(10)  # sane: a guess is ln(10); the lr left at 0.7 gave thousands
    assert ("note: schedule.warmup_epochs=2.5 is more than 0.25 of this 1-epoch run: the warm-up takes 0.25 epochs"
            in capsys.readouterr().out)


def test_ema_is_evaluated_beside_the_raw_weights_and_a_lagging_one_is_warned(tmp_path, capsys):
    """With an EMA the raw weights are evaluated too (rows, console, summary), by the same code: their accuracy is
    the checkpoint's `model` entry's; an average that ends more than a point below them gets a one-line warning."""
    out = tmp_path / "run"
    main(["--output-dir", str(out), *TINY, "optim.name=sgd", "optim.lr=0.2", "ema.enabled=true", "ema.decay=0.999"])
    console = capsys.readouterr().out
    rows, summary = rows_of(out), json.loads((out / "summary.json").read_text())
    assert all(r["test_acc_raw"] is not None and r["test_loss_raw"] is not None for r in rows)
    state = torch.load(list_checkpoints(out / "checkpoints")[-1], weights_only=True)
    assert summary["final_test_loss_raw"] == pytest.approx(recomputed_test_loss(state["model"], out), rel=1e-4)
    assert summary["final_test_acc_raw"] == rows[-1]["test_acc_raw"]
    assert summary["final_test_acc"] == rows[-1]["test_acc"]
    assert "ema acc" in console and "raw acc" in console and "final test acc (raw weights)" in console
    # decay 0.999 over 8 steps: the average is still nearly the initial weights
    assert summary["final_test_acc"] < summary["final_test_acc_raw"] - 0.01
    warnings = [line for line in console.splitlines() if line.startswith("warning: the weight average (EMA)")]
    assert len(warnings) == 1 and "ema.enabled=false" in warnings[0]


@pytest.mark.slow
def test_fast_ema_ends_at_or_above_the_raw_weights_on_real_images(cifar10_jpeg_tree, tmp_path):
    """The fast preset's EMA on a short real run (1,000 CIFAR-10-JPEG training images at 16 px, 100 steps of lr 0.2):
    the average must not end below the raw weights. Its old constant decay (0.99 with timm's warm-up) ended 1.6
    points below them on this very run (31.8% raw, 30.2% EMA); the ramped one ends 0.6 above."""
    data = tmp_path / "sub"
    for split, per_class in (("train", 100), ("test", 50)):
        for folder in sorted((cifar10_jpeg_tree / split).iterdir()):
            (data / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:per_class]:
                shutil.copyfile(image, data / split / folder.name / image.name)
    cfg = resolve_config("fast", overrides=[
        f"data.spec=imagefolder:{data}", f"data.root={tmp_path / 'cache'}", "data.image_size=16", "batch_size=100",
        "optim.lr=0.2", "eval_batch_size=500", "epochs=10", "tta=0", "compile=false", "wandb=disabled",
        f"output_dir={tmp_path / 'run'}"])
    summary = train(cfg)
    assert summary["final_test_acc"] >= summary["final_test_acc_raw"] - 0.01, summary


def test_ema_weights_are_evaluated_saved_and_resumed(tmp_path):
    out = tmp_path / "run"
    options = [*TINY, "ema.enabled=true", "ema.decay=0.8", "optim.name=sgd", "optim.lr=0.05",
               "checkpoint_every_steps=3", "keep_checkpoints=10"]
    summary = train(resolve_config(overrides=[*options, f"output_dir={out}"]))
    state = torch.load(list_checkpoints(out / "checkpoints")[-1], weights_only=True)
    last = load_weights(out / "model_last.safetensors")[0]
    assert all(torch.equal(last[k], state["ema"][k]) for k in last)  # the saved weights are the average
    assert any(not torch.equal(last[k], state["model"][k]) for k in last if last[k].is_floating_point())
    assert load_weights(out / "model_last.safetensors")[1]["ema"] is True
    # the trainer's test loss is the averaged weights' loss, not the raw weights'
    assert summary["final_test_loss"] == pytest.approx(recomputed_test_loss(last, out), rel=1e-4)
    assert recomputed_test_loss(state["model"], out) != pytest.approx(summary["final_test_loss"], rel=1e-4)

    # resuming mid-epoch 2 (step 6 of 8) restores the average too: the same final weights
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    for later in list_checkpoints(resumed / "checkpoints"):
        if int(later.stem.split("-")[1]) > 6:
            later.unlink()
    main(["--output-dir", str(resumed), "--resume"])
    again = load_weights(resumed / "model_last.safetensors")[0]
    assert all(torch.equal(last[k], again[k]) for k in last)


# ---------------------------------------------------------------------------------------------- TTA


def test_tta_is_what_the_trainer_evaluates(tmp_path):
    out = tmp_path / "run"
    summary = train(resolve_config(overrides=[*TINY, "epochs=1", "tta=2", f"output_dir={out}"]))
    last = load_weights(out / "model_last.safetensors")[0]
    assert summary["final_test_loss"] == pytest.approx(recomputed_test_loss(last, out, tta=2), rel=1e-4)
    assert summary["final_test_loss"] != pytest.approx(recomputed_test_loss(last, out, tta=0), rel=1e-4)


# ---------------------------------------------------------------------------------------------- hold-out, options


def test_holdout_reports_val_metrics_and_selects_on_them(tmp_path):
    out = tmp_path / "run"
    summary = train(resolve_config(overrides=[*TINY, "epochs=3", "data.holdout=64", f"output_dir={out}"]))
    rows = rows_of(out)
    assert all(0 <= r["val_acc"] <= 1 and r["val_loss"] > 0 for r in rows)
    best = max(range(3), key=lambda i: (rows[i]["val_acc"], -i))  # the first epoch with the best val accuracy
    assert summary["best_val_epoch"] == best + 1 and summary["best_val_acc"] == rows[best]["val_acc"]
    assert summary["test_acc_at_best_val"] == rows[best]["test_acc"]
    assert summary["final_val_acc"] == rows[-1]["val_acc"] and summary["final_test_acc"] == rows[-1]["test_acc"]
    assert load_weights(out / "model_best.safetensors")[1]["epoch"] == best + 1
    assert summary["steps"] == 3 * 3  # 256 - 64 = 192 training images, batch 64


@pytest.mark.parametrize("override, message", [
    ("tta=3", "error: tta=3 is not one of 0, 1, 2"),
    ("ema.decay=1.5", "error: ema: decay=1.5 must be in [0, 1)"),
    ("ema.every=0", "error: ema: decay=0.999 must be in [0, 1), every=0 >= 1"),
    ("ema.ramp_power=-1", "error: ema: decay=0.999 must be in [0, 1), every=1 >= 1, warmup_power=0.0 >= 0 and "
                          "ramp_power=-1.0 >= 0"),
    ("ema.decy=0.9", "error: unknown setting 'ema.decy' in the overrides; did you mean 'ema.decay'?"),
])
def test_bad_new_options_are_one_line_errors(override, message, capsys):
    with pytest.raises(SystemExit) as e:
        main([override])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(message) and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- time to accuracy


def test_the_paired_ema_comparison_reproduces_the_trainers_figures(tmp_path, capsys):
    """benchmarks/ema_vs_raw.py scores both weight sets of a checkpoint image by image: its accuracies are the ones
    the trainer reported for that step (same data, TTA and memory format), and the images only one of them gets right
    account for the difference."""
    out = tmp_path / "run"
    main(["--output-dir", str(out), *TINY, "optim.name=sgd", "optim.lr=0.2", "ema.enabled=true", "ema.decay=0.9",
          "tta=2", "channels_last=true"])
    last, _ = rows_of(out)[-1], capsys.readouterr()
    result = ema_vs_raw.compare(out)
    assert (result["step"], result["images"], result["tta"]) == (last["step"], 64, 2)
    assert (result["acc_raw"], result["acc_ema"]) == (last["test_acc_raw"], last["test_acc"])
    assert result["only_ema_right"] - result["only_raw_right"] == round(64 * (last["test_acc"] - last["test_acc_raw"]))
    assert ema_vs_raw.main([str(out), "--tta", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tta"] == 0

    plain = tmp_path / "plain"  # no EMA in the checkpoint: a one-line error, not a traceback
    main(["--output-dir", str(plain), *TINY, "epochs=1", "ema.enabled=false"])
    capsys.readouterr()
    assert ema_vs_raw.main([str(plain)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {list_checkpoints(plain / 'checkpoints')[-1]} holds no EMA "
                                               "(the run had ema.enabled=false); nothing to compare")


@pytest.mark.parametrize("only_a, only_b, p", [(0, 0, 1.0), (0, 5, 0.0625), (3, 3, 1.0), (18, 24, 0.4408)])
def test_mcnemar_exact(only_a, only_b, p):
    assert ema_vs_raw.mcnemar_exact(only_a, only_b) == pytest.approx(p, abs=1e-4)
