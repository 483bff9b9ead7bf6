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
from formats import read_wandb_records, wandb_items
from PIL import Image

from resnet_lite.config import TrainConfig, from_dict, resolve_config
from resnet_lite.data.images import build_normalize
from resnet_lite.data.sources import DataConfig, load_data
from resnet_lite.models.lite import create_model
from resnet_lite.outputs import console
from resnet_lite.outputs.checkpoint import list_checkpoints
from resnet_lite.outputs.tracking import wandb_mode
from resnet_lite.outputs.weights import load_weights
from resnet_lite.train import main, train
from resnet_lite.training.distributed import resolve_mixed_precision
from resnet_lite.training.optim import OptimConfig, ScheduleConfig, build_optimizer, build_scheduler, lr_factor

BIN = Path(sys.executable).parent
TINY = ["data.spec=synthetic", "data.synthetic_train=256", "data.synthetic_test=64", "data.image_size=8",
        "batch_size=64", "eval_batch_size=64", "epochs=2"]
METRIC_KEYS = {"epoch", "step", "train_loss", "test_loss", "test_acc", "lr", "epoch_seconds", "images_per_second"}


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-default"))
    monkeypatch.setenv("WANDB_SILENT", "true")


def run(out, *overrides, resume=None):
    return train(resolve_config(overrides=[*TINY, f"output_dir={out}", *overrides]), resume=resume)


def weights(path):
    return load_weights(path)[0]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- optim


def test_report_cosine_is_the_notebooks_per_batch_cosine_annealing():
    model = torch.nn.Linear(2, 2)
    schedule = ScheduleConfig("report_cosine", t_max=200)
    ours = build_scheduler(torch.optim.Adam(model.parameters(), lr=0.01), schedule, 391, 2)
    seed_opt = torch.optim.Adam(model.parameters(), lr=0.01)
    seed = torch.optim.lr_scheduler.CosineAnnealingLR(seed_opt, T_max=200, eta_min=0)
    for step in range(782):  # two epochs at batch 128: the lr reaches 0 at step 200 and climbs back by 400
        assert ours.get_last_lr()[0] == pytest.approx(seed.get_last_lr()[0], abs=1e-9), step
        ours.optimizer.step(), seed_opt.step()
        ours.step(), seed.step()


@pytest.mark.parametrize("name", ["cosine", "onecycle", "constant"])
def test_schedules_warm_up_and_end_where_configured(name):
    cfg = ScheduleConfig(name, warmup_epochs=1, start_lr_fraction=0.1, final_lr_fraction=0.05)
    f = lr_factor(cfg, steps_per_epoch=10, epochs=5)
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55) and f(10) == pytest.approx(1.0)
    values = [f(s) for s in range(10, 50)]
    if name == "constant":
        assert values == [1.0] * 40
    else:
        assert all(a >= b for a, b in zip(values, values[1:])) and f(50) == pytest.approx(0.05)


def test_optimizers():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    sgd = build_optimizer(model, OptimConfig("sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                             no_decay_norm_bias=True))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    decay, no_decay = sgd.param_groups
    assert [p.ndim for p in decay["params"]] == [4] and decay["weight_decay"] == 5e-4
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0  # conv bias, BN weight and bias
    adamw = build_optimizer(model, OptimConfig("adamw", lr=1e-3, betas=(0.8, 0.9), weight_decay=0.05))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.9)
    assert len(adamw.param_groups) == 1 and adamw.param_groups[0]["weight_decay"] == 0.05


# ---------------------------------------------------------------------------------------------- a real run


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
    assert from_dict(TrainConfig, yaml.safe_load((out / "config.yaml").read_text())) == dataclasses.replace(cfg, output_dir=None)

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
    assert not same_weights(weights(tmp_path / "a/model_last.safetensors"), weights(tmp_path / "c/model_last.safetensors"))

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


def test_wandb_auto_is_online_only_when_logged_in(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("NETRC", raising=False)
    mode, hint = wandb_mode("auto")
    assert mode == "disabled" and "wandb login" in hint and "\n" not in hint
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode("auto") == ("online", None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode("auto") == ("offline", None) and wandb_mode("disabled") == ("disabled", None)


@pytest.mark.parametrize("launcher, expected", [(None, "no"), ("no", "no"), ("fp16", "fp16"), ("bf16", "bf16")])
def test_mixed_precision_auto_on_cpu(monkeypatch, launcher, expected):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU choice")
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    if launcher:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    assert resolve_mixed_precision("auto") == expected and resolve_mixed_precision("bf16") == "bf16"


def test_plain_progress_lines_for_log_files(monkeypatch, capsys):
    monkeypatch.setattr(console, "PLAIN_EVERY", 0.0)
    monkeypatch.setattr(console, "REFRESH_EVERY", 0.0)
    row = {"epoch": 1, "train_loss": 1.5, "test_loss": 1.25, "test_acc": 0.5, "lr": 0.01, "epoch_seconds": 2.0,
           "images_per_second": 100.0}
    for enabled in (False, True):
        progress = console.Progress(enabled, epochs=3, steps_per_epoch=2, interactive=False)
        progress.start_epoch(1)
        progress.update(64, lambda: 2.0, 0.01)
        progress.update(64, lambda: 1.5, 0.01)
        progress.end_epoch(row)
        lines = capsys.readouterr().out.splitlines()
        if not enabled:
            assert lines == []  # what a non-main process prints
    assert lines[0].startswith("epoch 1/3 step 1/2 loss 2.0000 lr 1.00e-02") and "img/s eta" in lines[0]
    assert lines[0].split()[-3:-1] == ["run", "eta"]  # the whole run's: 5 of its 6 steps left
    assert lines[2].split() == ["epoch", "train", "loss", "test", "loss", "test", "acc", "lr", "time", "img/s"]
    assert lines[3].split() == ["1/3", "1.5000", "1.2500", "50.00%", "1.00e-02", "2.0s", "100"]


@pytest.mark.parametrize("width", [80, 120])
def test_the_progress_line_keeps_its_step_count_and_etas_in_a_narrow_terminal(monkeypatch, width):
    """At 80 columns rich used to cut the step count to "12…" and the ETA to "-:…"; now the bar gives way first."""
    import io

    from rich.console import Console

    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.setattr(console, "REFRESH_EVERY", 0.0)
    progress = console.Progress(True, epochs=70, steps_per_epoch=391, interactive=True)
    progress.start_epoch(12, done_steps=119)
    progress.update(128, lambda: 2.3456, 0.01)
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=True).print(progress.bar.make_tasks_table(progress.bar.tasks))
    progress.close()
    (line,) = out.getvalue().splitlines()
    assert line.startswith("epoch 12/70 120/391 eta 0:0") and " run " in line and line.endswith("lr 1.00e-02")
    assert ("━" in line) == (width > 80)  # a bar where there is room for one


def test_list_prints_the_presets(capsys):
    main(["--list"])
    out = capsys.readouterr().out
    for i in range(9):
        assert f"model{i}" in out
    assert "2,799,146" in out and "4,587,306" in out and "91.47" in out and "report_cosine" in out
    header = next(line for line in out.splitlines() if "preset" in line and "params" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == [
        "preset", "model", "params", "batch", "eval batch", "optimizer", "lr", "epochs", "schedule", "report acc %"]
    assert "seed" not in out  # the random seed's word alone


def test_help_lists_presets_and_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "model0, model1" in out and "KEY=VALUE" in out
    for flag in ("--variant", "--config", "--data", "--data-dir", "--epochs", "--batch-size", "--lr", "--seed",
                 "--output-dir", "--wandb", "--resume", "--list"):
        assert flag in out


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
