"""W&B and the console, read back from the real thing: one offline run on a pseudo-terminal (so the rich bar draws
as it does for a person at a terminal), decoded from its .wandb file into wandb's own protobuf records. No mock.

The run: synthetic 8x8 images, 2 epochs of 4 steps, an EMA and flip TTA (so the evaluated model is not the trained
one), wandb.log_every_steps=3, wandb.log_model=true, names from settings and from wandb's environment variables.
"""
import base64
import hashlib
import json
import math
import os
import pty
import re
import subprocess
import sys
import threading

import pytest
import torch

from resnet_lite.config import resolve_config
from resnet_lite.data.images import build_normalize
from resnet_lite.data.sources import DataConfig, load_data
from resnet_lite.models.lite import create_model
from resnet_lite.models.tta import TTA
from resnet_lite.outputs.weights import load_weights
from resnet_lite.training.optim import ScheduleConfig, lr_factor

from support.formats import read_wandb_records, wandb_items

STEPS_PER_EPOCH, EPOCHS, EVERY, LR = 4, 2, 3, 0.005
RUN = ["--data", "synthetic", "--epochs", str(EPOCHS), "--batch-size", "32", "--lr", str(LR), "--wandb", "offline",
       "data.synthetic_train=128", "data.synthetic_test=64", "data.image_size=8", "eval_batch_size=64",
       "ema.enabled=true", "ema.decay=0.9", "tta=1", f"wandb.log_every_steps={EVERY}", "wandb.log_model=true",
       "wandb.name=tiny", "wandb.tags=cifar, smoke", "wandb.group=trust"]
DATA = DataConfig("synthetic", synthetic_train=128, synthetic_test=64, image_size=8)


def _on_a_terminal(cmd, env, cwd) -> tuple[int, str]:
    """Run `cmd` with stdout and stderr on a pseudo-terminal; (exit code, everything the terminal received)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, cwd=cwd)
    os.close(slave)
    received = []

    def read():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                return
            if not data:
                return
            received.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code = proc.wait(timeout=300)
    reader.join(timeout=30)
    os.close(master)
    return code, b"".join(received).decode(errors="replace")


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wandb")
    out = tmp / "run"
    env = dict(os.environ, WANDB_PROJECT="trust-project", WANDB_NOTES="from the environment", OMP_NUM_THREADS="1",
               COLUMNS="160", TERM="xterm-256color", WANDB_DIR=str(tmp / "wandb-default"))
    for key in ("WANDB_MODE", "WANDB_SILENT", "WANDB_NAME", "WANDB_RUN_GROUP", "WANDB_TAGS", "RANK"):
        env.pop(key, None)
    code, terminal = _on_a_terminal([sys.executable, "-m", "resnet_lite.train", *RUN, "--output-dir", str(out)],
                                    env, tmp)
    assert code == 0, terminal[-3000:]
    (log,) = out.glob("wandb/offline-run-*/run-*.wandb")
    records = read_wandb_records(log)
    kinds = {}
    for r in records:
        kinds.setdefault(r.WhichOneof("record_type"), []).append(r)
    return out, terminal, kinds


def test_the_bar_drew_on_the_terminal_without_nan_and_said_evaluating(offline_run):
    out, terminal, kinds = offline_run
    assert "img/s" in terminal and re.search(r"eta \S+ run \d", terminal)  # the bar was live, with the run's ETA
    assert "evaluating" in terminal
    assert "nan" not in terminal and "0.00e+00" not in terminal  # no made-up loss or lr before the first read


def test_no_progress_redraws_in_the_wandb_console_log(offline_run):
    out, terminal, kinds = offline_run
    lines = "".join(r.output_raw.line for r in kinds["output_raw"])
    assert "epoch  train loss  test loss" in lines and "      2/2 " in lines  # the epoch table is captured ...
    assert "img/s loss" not in lines and not re.search(r"eta \S+ run \d", lines) and "\r" not in lines  # ... the bar's
    assert len(re.findall(r"eta \S+ run \d", terminal)) > 2  # redraws not, which the terminal did get, repeatedly
    assert len(kinds["output_raw"]) < 30


def test_run_names_from_settings_and_environment(offline_run):
    out, terminal, kinds = offline_run
    (run,) = kinds["run"]
    assert run.run.display_name == "tiny" and run.run.run_group == "trust" and list(run.run.tags) == ["cifar", "smoke"]
    assert run.run.project == "trust-project" and run.run.notes == "from the environment"  # WANDB_PROJECT, WANDB_NOTES


def test_config_is_the_resolved_one_with_what_the_run_measured(offline_run):
    out, terminal, kinds = offline_run
    config = {}
    for r in kinds["config"]:
        config.update({k: v["value"] if isinstance(v, dict) and "value" in v else v
                       for k, v in wandb_items(r.config.update).items()})
    cfg = resolve_config(overrides=[])
    assert {"model", "optim", "schedule", "augment", "ema", "wandb", "data"} <= set(config)
    assert config["mixed_precision"] == "no"  # what ran, not "auto"
    assert None not in config["augment"].values() and config["augment"]["flip"] is True  # the report preset, filled in
    assert config["params"] == 2_799_146 and config["world_size"] == 1 and config["steps_per_epoch"] == STEPS_PER_EPOCH
    assert config["dataset"] == {"name": "synthetic", "train": 128, "test": 64, "val": 0, "classes": 10,
                                 "image_size": 8}
    assert set(config["versions"]) == {"resnet_lite", "torch", "timm", "accelerate", "python"}
    assert config["wandb"]["log_every_steps"] == EVERY and config["model"] == cfg.model


def test_history_has_per_step_loss_and_lr_and_per_epoch_metrics(offline_run):
    out, terminal, kinds = offline_run
    rows = [wandb_items(r.history.item) for r in kinds["history"]]
    steps = [r for r in rows if "train/loss" in r]
    assert [r["_step"] for r in steps] == list(range(EVERY, EPOCHS * STEPS_PER_EPOCH + 1, EVERY))  # 3, 6
    factor = lr_factor(ScheduleConfig(), STEPS_PER_EPOCH, EPOCHS)
    for r in steps:  # the lr the step used, and the mean loss of the steps since the previous row
        assert r["train/lr"] == pytest.approx(LR * factor(r["_step"] - 1), rel=1e-9)
        assert math.isfinite(r["train/loss"]) and 0 < r["train/loss"] < 20
    epochs = [r for r in rows if "test_acc" in r]
    assert [(r["epoch"], r["_step"]) for r in epochs] == [(1, 4), (2, 8)]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_acc"] for r in epochs] == [m["test_acc"] for m in metrics]
    assert [r["_step"] for r in rows] == sorted(r["_step"] for r in rows)  # none dropped for a step out of order


def test_summary_holds_the_best_values(offline_run):
    out, terminal, kinds = offline_run
    summary = {}
    for r in kinds["summary"]:
        summary.update(wandb_items(r.summary.update))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["test_acc"]["max"] == max(m["test_acc"] for m in metrics)
    assert summary["test_acc"]["last"] == metrics[-1]["test_acc"]
    assert summary["test_loss"]["min"] == min(m["test_loss"] for m in metrics)
    assert summary["train_loss"]["min"] == min(m["train_loss"] for m in metrics)
    assert "max" not in summary["test_loss"] and "min" not in summary["test_acc"]


def test_best_and_last_weights_are_model_artifacts(offline_run):
    out, terminal, kinds = offline_run
    models = [r.artifact for r in kinds["artifact"] if r.artifact.type == "model"]
    assert {a.name for a in models} == {f"model-{kinds['run'][0].run.run_id}"}

    def md5(path):
        return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()

    by_alias = {alias: a for a in models for alias in a.aliases}
    for which in ("best", "last"):
        contents = {m.path: m.digest for m in by_alias[which].manifest.contents}
        assert contents == {"model.safetensors": md5(out / f"model_{which}.safetensors"),
                            "config.yaml": md5(out / "config.yaml")}


def test_sample_predictions_are_the_evaluated_models(offline_run):
    """The EMA's weights behind flip TTA, as the evaluation and the confusion matrix use, not the trained weights."""
    out, terminal, kinds = offline_run
    (table,) = out.glob("wandb/offline-run-*/files/media/table/sample_predictions*.json")
    table = json.loads(table.read_text())
    assert table["columns"] == ["image", "true", "predicted", "confidence"] and len(table["data"]) == 32
    test = load_data(DATA).test
    state, meta = load_weights(out / "model_last.safetensors")  # the EMA's: what the run evaluated

    def predict(weights, tta):
        model = create_model(meta["model"], num_classes=10)
        model.load_state_dict(weights)
        with torch.no_grad():
            probs = TTA(model.eval(), tta)(build_normalize(meta["mean"], meta["std"])(test.images[:32])).softmax(1)
        return [(f"class{int(p.argmax())}", round(float(p.max()), 4)) for p in probs]

    logged = [(row[2], row[3]) for row in table["data"]]
    evaluated = predict(state, 1)
    assert [p for p, _ in logged] == [p for p, _ in evaluated]
    assert [c for _, c in logged] == pytest.approx([c for _, c in evaluated], abs=2e-4)
    trained = torch.load(sorted(out.glob("checkpoints/step-*.pt"))[-1], weights_only=True)["model"]
    assert [c for _, c in logged] != pytest.approx([c for _, c in predict(trained, 0)], abs=2e-4)


@pytest.mark.slow
def test_a_sweeps_runs_share_a_group(tmp_path):
    """A real one-preset sweep, offline: its run's W&B group is the sweep folder's name."""
    out = tmp_path / "study"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_DIR=str(tmp_path / "wandb-default"), WANDB_SILENT="true")
    for key in ("WANDB_MODE", "WANDB_RUN_GROUP", "RANK"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "resnet_lite.sweep", "model5", "--output-dir", str(out), "--epochs", "1", "--data",
           "synthetic", "--batch-size", "64", "--wandb", "offline", "data.synthetic_train=128",
           "data.synthetic_test=64", "data.image_size=8", "eval_batch_size=64"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (log,) = (out / "model5").glob("wandb/offline-run-*/run-*.wandb")
    (run,) = [r.run for r in read_wandb_records(log) if r.WhichOneof("record_type") == "run"]
    assert run.run_group == "study"
