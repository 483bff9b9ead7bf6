"""The trainer: schedules and optimizers, a real run on synthetic data and everything it leaves behind, resuming,
determinism, W&B offline, the command line, and real multi-process runs (torchrun over gloo, accelerate launch).

Runs are tiny (a few hundred 8x8 or 16x16 synthetic images) so the whole file stays fast on two CPU cores.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from resnet_lite.config import TrainConfig, from_dict, resolve_config
from resnet_lite.data.images import build_normalize
from resnet_lite.data.sources import DataConfig, load_data
from resnet_lite.models.lite import create_model
from resnet_lite.outputs.checkpoint import list_checkpoints
from resnet_lite.outputs.weights import load_weights
from resnet_lite.train import main, train
from resnet_lite.training.optim import lr_factor

from support.formats import read_wandb_records, wandb_items

BIN = Path(sys.executable).parent
TINY = ["data.spec=synthetic", "data.synthetic_train=256", "data.synthetic_test=64", "data.image_size=8",
        "batch_size=64", "eval_batch_size=64", "epochs=2"]
METRIC_KEYS = {"epoch", "step", "train_loss", "test_loss", "test_acc", "lr", "epoch_seconds", "images_per_second"}


pytestmark = pytest.mark.usefixtures("no_wandb")


def run(out, *overrides, resume=None):
    return train(resolve_config(overrides=[*TINY, f"output_dir={out}", *overrides]), resume=resume)


def weights(path):
    return load_weights(path)[0]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- optim


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "disabled")
    cfg = resolve_config(overrides=["data.spec=synthetic", "data.synthetic_train=512", "data.synthetic_test=256",
                                    "data.image_size=16", "batch_size=64", "epochs=3", f"output_dir={out}"])
    summary = train(cfg)
    mp.undo()
    return out, cfg, summary


def test_run_leaves_every_artifact(short_run):
    out, cfg, summary = short_run
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json", "model_best.safetensors",
                                               "model_last.safetensors", "curves.png", "checkpoints"}
    assert not list(out.glob(".*.tmp")) and not list(out.glob("checkpoints/.*.tmp"))  # nothing half-written
    # the resolved settings, less output_dir: reused as --config, the file starts a new run rather than pointing back
    assert from_dict(TrainConfig, yaml.safe_load((out / "config.yaml").read_text())) == dataclasses.replace(
        cfg, output_dir=None)

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["step"] for r in rows] == [8, 16, 24]  # 512 / 64 per epoch
    assert all(set(r) == METRIC_KEYS for r in rows)
    assert all(0 <= r["test_acc"] <= 1 and r["images_per_second"] > 0 and r["lr"] > 0 for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] * 0.8  # it learns

    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["world_size"] == 1 and summary["eval_samples"] == 256 and summary["params"] == 2_799_146
    assert summary["final_test_acc"] == rows[-1]["test_acc"]
    assert summary["best_test_acc"] == max(r["test_acc"] for r in rows)
    assert rows[summary["best_epoch"] - 1]["test_acc"] == summary["best_test_acc"]
    assert set(summary["per_class_acc"]) == {f"class{i}" for i in range(10)}
    assert set(summary["versions"]) == {"torch", "timm", "accelerate", "resnet_lite", "python"}
    assert summary["mixed_precision"] == "no" and len(summary["devices"]) == 1 and summary["total_seconds"] > 0

    with Image.open(out / "curves.png") as img:
        assert img.format == "PNG" and img.size[0] > img.size[1] > 200


def test_curves_have_whole_epoch_ticks_and_a_learning_rate_panel(short_run):
    from resnet_lite.outputs.plots import curves_figure

    out, cfg, summary = short_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    factor = lr_factor(cfg.schedule, 8, cfg.epochs)
    schedule = [(s / 8, cfg.optim.lr * factor(s)) for s in range(25)]
    fig = curves_figure(rows, "run", schedule)
    acc, loss, lr = fig.axes
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(t == int(t) for t in ticks), ticks  # epoch 1, 2, 3: never 1.5
    assert lr.get_title() == "learning rate"
    planned, last = lr.get_lines()
    assert list(planned.get_ydata()) == [v for _, v in schedule] and list(last.get_ydata()) == [r["lr"] for r in rows]


@pytest.mark.parametrize("which, key", [("best", "best_test_acc"), ("last", "final_test_acc")])
def test_weights_rebuild_the_model_and_its_accuracy(short_run, which, key):
    """Only the file: its metadata names the model, classes and preprocessing; the accuracy is the recorded one."""
    out, cfg, summary = short_run
    state, meta = load_weights(out / f"model_{which}.safetensors")
    assert meta["model"] == "lite_r4b2" and meta["classes"] == [f"class{i}" for i in range(10)]
    assert meta["image_size"] == 16 and meta["in_chans"] == 3
    model = create_model(meta["model"], num_classes=meta["num_classes"], in_chans=meta["in_chans"])
    model.load_state_dict(state)  # strict: the exact keys of a plain model
    test = load_data(DataConfig("synthetic", synthetic_train=512, synthetic_test=256, image_size=16)).test
    model.eval()
    with torch.no_grad():
        pred = model(build_normalize(meta["mean"], meta["std"])(test.images)).argmax(1)
    assert (pred == test.labels).double().mean().item() == pytest.approx(summary[key], abs=1.5 / 256)


def test_checkpoints_are_plain_and_pruned(short_run):
    out, cfg, summary = short_run
    files = list_checkpoints(out / "checkpoints")
    assert [f.name for f in files] == ["step-00000016.pt", "step-00000024.pt"]  # keep_checkpoints=2, newest last
    state = torch.load(files[-1], weights_only=True)
    assert (state["epoch"], state["batch"], state["step"]) == (3, 0, 24)
    assert state["config"]["model"] == "lite_r4b2" and state["best"]["acc"] == summary["best_test_acc"]
    assert isinstance(state["rng"]["torch"], torch.Tensor) and state["scaler"] is None
    assert same_weights(state["model"], weights(out / "model_last.safetensors"))


# ---------------------------------------------------------------------------------------------- determinism, resume


OPTIONS = ["grad_accum=2", "label_smoothing=0.1", "schedule.name=onecycle", "schedule.warmup_epochs=0.5",
           "optim.name=sgd", "optim.lr=0.05", "optim.nesterov=true", "optim.weight_decay=5e-4",
           "optim.no_decay_norm_bias=true", "channels_last=true", "augment.cutout=3"]


def test_same_seed_same_weights_and_resume_mid_epoch_is_exact(tmp_path):
    a = run(tmp_path / "a", *OPTIONS, "checkpoint_every_steps=3", "keep_checkpoints=10")
    run(tmp_path / "b", *OPTIONS)
    assert a["steps"] == 8  # 256 / 64 per epoch, 2 epochs: accumulation does not change the step count
    assert same_weights(weights(tmp_path / "a/model_last.safetensors"), weights(tmp_path / "b/model_last.safetensors"))
    run(tmp_path / "c", *OPTIONS, "seed=1")
    assert not same_weights(weights(tmp_path / "a/model_last.safetensors"),
                            weights(tmp_path / "c/model_last.safetensors"))

    # step 6 is mid-epoch 2 (4 steps per epoch): resume from it in a copy of the run directory
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "a", resumed)
    for later in list_checkpoints(resumed / "checkpoints"):
        if int(later.stem.split("-")[1]) > 6:
            later.unlink()
    main(["--output-dir", str(resumed), "--resume"])
    assert same_weights(weights(tmp_path / "a/model_last.safetensors"), weights(resumed / "model_last.safetensors"))
    rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and [r["step"] for r in rows] == [4, 8]


def test_resume_extends_a_finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    run(out, "epochs=1")
    main(["--resume", str(out / "checkpoints"), "--epochs", "2"])  # a path: the run directory follows from it
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 4), (2, 8)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["steps"] == 8
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 2
    assert "resuming" in capsys.readouterr().out


def test_resume_without_a_checkpoint_starts_fresh(tmp_path, capsys):
    out = tmp_path / "new"
    main(["--output-dir", str(out), "--resume", *TINY[:-1], "epochs=1"])  # what a first Slurm start runs
    assert "starting a new run" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["steps"] == 4


# ---------------------------------------------------------------------------------------------- W&B, command line


def test_wandb_offline_writes_a_run_folder(tmp_path):
    out = tmp_path / "run"
    run(out, "wandb=offline", "epochs=1")
    (folder,) = (out / "wandb").glob("offline-run-*")
    assert list(folder.glob("*.wandb")) and list(folder.glob("files/media/table/confusion_matrix*.json"))
    assert list(folder.glob("files/media/table/sample_predictions*.json"))


@pytest.mark.parametrize("argv, message", [
    (["optim.lrr=0.1"], "error: unknown setting 'optim.lrr' in the overrides; did you mean 'optim.lr'?"),
    (["--variant", "model55"], "error: unknown preset 'model55'; did you mean model5"),
    (["--epochs", "many"], "error: argument --epochs: invalid int value: 'many'"),
    (["--resume"], "error: --resume without a path"),
    (["--resume", "/nonexistent/run"], "error: no checkpoint at /nonexistent/run"),
    (["--data", "cifar11", "--output-dir", "{tmp}/x"], "error: unknown dataset 'cifar11'"),
])
def test_config_errors_are_one_line(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "x").exists()  # no empty run directory left behind


def test_config_error_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "resnet_lite.train", "--variant", "model5", "optim.lr=fast"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: optim.lr must be a number, got 'fast' (str); fix it in the config or override"


# ---------------------------------------------------------------------------------------------- real launchers


def _env(tmp_path, **extra):
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", **extra)
    env.pop("RANK", None)
    return env


@pytest.mark.slow
def test_accelerate_launch_one_cpu_process(tmp_path):
    out = tmp_path / "run"
    cmd = [str(BIN / "accelerate"), "launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "resnet_lite.train", *TINY, "epochs=1",
           "--output-dir", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["eval_samples"] == 64 and summary["steps"] == 4


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_as_one(tmp_path):
    """Two gloo processes: world size 2, disjoint shards, identical weights, every test image counted once, and the
    per-step W&B loss is both processes' mean."""
    out, report = tmp_path / "run", tmp_path / "ranks"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "resnet_lite.train", *TINY,
           "data.synthetic_test=101", "--output-dir", str(out),  # 101: the two eval shards differ by one image
           "--wandb", "offline", "wandb.log_every_steps=4"]  # 4 steps an epoch: a row is an epoch's mean loss
    env = dict(_env(tmp_path, ACCELERATE_USE_CPU="true", RESNET_LITE_RANK_REPORT=str(report)), WANDB_MODE="offline")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("lite_r4b2 (2,799,146 params) on 2 x") == 1  # the main process alone prints

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["eval_samples"] == 101 and len(summary["devices"]) == 2
    assert summary["steps"] == 8  # global batch 64 = 2 x 32: the same steps per epoch as one process
    r0, r1 = (json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    t0, t1 = set(r0["train_indices_first_epoch"]), set(r1["train_indices_first_epoch"])
    assert len(t0) == len(t1) == 128 and not t0 & t1 and t0 | t1 == set(range(256))
    e0, e1 = set(r0["test_indices"]), set(r1["test_indices"])
    assert not e0 & e1 and e0 | e1 == set(range(101)) and r0["test_samples"] + r1["test_samples"] == 101
    assert r0["state_sha256"] == r1["state_sha256"]  # weights and BatchNorm statistics agree across processes
    state = weights(out / "model_last.safetensors")
    assert all(not k.startswith("module.") for k in state)
    (log,) = out.glob("wandb/offline-run-*/run-*.wandb")
    rows = [wandb_items(r.history.item) for r in read_wandb_records(log) if r.WhichOneof("record_type") == "history"]
    step_rows = [(r["_step"], r["train/loss"]) for r in rows if "train/loss" in r]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s for s, _ in step_rows] == [4, 8]  # each the mean over an epoch's batches of both processes, as train_loss
    assert [loss for _, loss in step_rows] == pytest.approx([m["train_loss"] for m in metrics], rel=1e-6)


def test_a_launcher_accelerate_cannot_see_is_an_error(tmp_path, monkeypatch, capsys):
    """WORLD_SIZE=2 from a launcher, but no rank variables for Accelerate: two copies would each train everything."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as e:
        main(["--variant", "model5", "--data", "synthetic", "--output-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: the launcher started 2 processes") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
