"""The trackers of log_with, read back with each one's own reader: TensorBoard's EventAccumulator, MLflow's client on
a local file store, W&B's offline transaction log. One real run logs to all three; each must hold the same scalars
(names, steps, values) as W&B, and the epochs' rows as metrics.jsonl holds them.
"""
import json
import os
import subprocess
import sys

import pytest

from resnet_lite.train import main as train_main

from support.formats import read_wandb_records, wandb_items

EVERY, EPOCHS, STEPS_PER_EPOCH = 3, 2, 4
RUN = ["--data", "synthetic", "--epochs", str(EPOCHS), "--batch-size", "32", "--lr", "0.005",
       "data.synthetic_train=128", "data.synthetic_test=64", "data.image_size=8", "eval_batch_size=64",
       f"wandb.log_every_steps={EVERY}"]
TIMING = ("epoch_seconds", "images_per_second")  # not the same in two runs


def _env(tmp, **extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_SILENT="true", WANDB_DIR=str(tmp / "wandb-default"),
               MLFLOW_TRACKING_URI=(tmp / "mlruns").as_uri(), MLFLOW_ALLOW_FILE_STORE="true", **extra)
    for key in ("WANDB_MODE", "RANK", "MLFLOW_EXPERIMENT_NAME", "RESNET_LITE_TEST_CRASH"):
        env.pop(key, None) if key not in extra else None
    return env


def _train(tmp, out, *args, **env):
    proc = subprocess.run([sys.executable, "-m", "resnet_lite.train", *RUN, *args, "--output-dir", str(out)],
                          env=_env(tmp, **env), cwd=tmp, capture_output=True, text=True, timeout=300)
    return proc


def tensorboard_scalars(run_dir) -> dict:
    """{tag: [(step, value), ...]} as TensorBoard shows the run's scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trackers")
    out = tmp / "run"
    proc = _train(tmp, out, "--log-with", "tensorboard,wandb,mlflow", "--wandb", "offline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (log,) = out.glob("wandb/offline-run-*/run-*.wandb")
    wandb_rows = [wandb_items(r.history.item) for r in read_wandb_records(log)
                  if r.WhichOneof("record_type") == "history"]
    wandb = {}
    for row in wandb_rows:
        media = {key.split("/")[0] for key in row if key.endswith("/_type")}  # the final media: W&B's own
        for key, value in row.items():
            if not key.startswith("_") and key.split("/")[0] not in media:
                wandb.setdefault(key, []).append((row["_step"], value))
    return tmp, out, wandb


def test_tensorboard_holds_the_same_scalars_as_wandb(logged):
    tmp, out, wandb = logged
    board = tensorboard_scalars(out)
    assert set(board) == set(wandb) and {"train/loss", "train/lr", "test_acc", "train_loss", "lr"} <= set(board)
    for tag, points in wandb.items():
        assert [s for s, _ in board[tag]] == [s for s, _ in points], tag
        assert [v for _, v in board[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag  # float32 there
    assert [s for s, _ in board["train/loss"]] == list(range(EVERY, EPOCHS * STEPS_PER_EPOCH + 1, EVERY))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert board["test_acc"] == [(m["step"], pytest.approx(m["test_acc"], rel=1e-6)) for m in metrics]


def test_mlflow_holds_the_same_scalars_and_the_flattened_config(logged):
    tmp, out, wandb = logged
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a file store without it
    import mlflow

    client = mlflow.MlflowClient((tmp / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("resnet_lite").experiment_id])
    assert run.info.run_name == out.name
    assert set(run.data.metrics) == set(wandb)
    for key, points in wandb.items():
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)] == points, key
    assert run.data.params["optim.lr"] == "0.005" and run.data.params["data.image_size"] == "8"


@pytest.mark.slow
def test_tensorboard_after_a_crash_and_resume_reads_as_one_run(tmp_path):
    """A run killed at step 9 and resumed from its step-5 checkpoint: the rows the killed process logged after step 5
    are hidden (SummaryWriter's purge_step), so TensorBoard shows what an uninterrupted run logs (resume is exact)."""
    args = ["--epochs", "3", "--log-with", "tensorboard", "--wandb", "disabled", "checkpoint_every_steps=5",
            "checkpoint_every_epochs=0"]
    whole = _train(tmp_path, tmp_path / "whole", *args)
    assert whole.returncode == 0, whole.stderr[-3000:]
    crashed = _train(tmp_path, tmp_path / "crashed", *args, RESNET_LITE_TEST_CRASH="step:9")
    assert crashed.returncode == -9, crashed.stderr[-3000:]
    assert tensorboard_scalars(tmp_path / "crashed")["test_acc"][-1][0] == 8  # logged after the step-5 checkpoint
    resumed = _train(tmp_path, tmp_path / "crashed", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = tensorboard_scalars(tmp_path / "whole"), tensorboard_scalars(tmp_path / "crashed")
    assert set(got) == set(expected)
    for tag in set(expected) - set(TIMING):
        assert got[tag] == expected[tag], tag
    assert [s for s, _ in got["images_per_second"]] == [4, 8, 12]


def test_unknown_or_missing_trackers_and_a_wandb_mode_without_wandb_are_one_line_errors(capsys, tmp_path):
    from accelerate.tracking import get_available_trackers

    from resnet_lite.outputs.trackers import TRACKERS

    cases = [(["--log-with", "tensorbord"], "error: log_with: 'tensorbord' is not a tracker; did you mean "
                                            "'tensorboard'?"),
             (["--log-with", "tensorboard", "--wandb", "offline"], "error: wandb.mode=offline but "
                                                                   "log_with=tensorboard leaves W&B out")]
    missing = [name for name in TRACKERS if name not in {str(t) for t in get_available_trackers()}]
    if missing:
        cases.append((["--log-with", missing[0]], f"error: log_with names {missing[0]}, not installed here; "
                                                  f"pip install {TRACKERS[missing[0]]}"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            train_main([*RUN, *argv, "--output-dir", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()
