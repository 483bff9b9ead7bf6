"""A run directory is never replaced by accident: real runs, real folders, the command line as a user types it.

Without --resume, an --output-dir holding a run is a one-line error that leaves every file as it was (on every
process of a multi-process launch); --overwrite replaces it; a run's config.yaml reused as --config starts a new run;
--resume refuses another model and says what a longer --epochs does to the schedule.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from resnet_lite.outputs.checkpoint import list_checkpoints
from resnet_lite.train import main
from resnet_lite.training.optim import ScheduleConfig, lr_factor

TINY = ["--data", "synthetic", "--batch-size", "64", "--lr", "0.005", "data.synthetic_train=128",
        "data.synthetic_test=64", "data.image_size=8", "eval_batch_size=64"]
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished run of one epoch (2 steps); tests copy it before they touch it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "disabled")
    assert main([*TINY, "--epochs", "1", "--output-dir", str(out)]) == 0
    mp.undo()
    return out


def _copy(run, to):
    shutil.copytree(run, to)
    return to


def _snapshot(folder):
    return {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in Path(folder).rglob("*")}


def _error(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("keep", [None, ("config.yaml", "metrics.jsonl"), ("checkpoints",)],
                         ids=["finished", "killed-before-a-checkpoint", "checkpoints-only"])
def test_a_directory_holding_a_run_is_refused_and_left_as_it_was(keep, finished, tmp_path, capsys):
    run = _copy(finished, tmp_path / "run")
    for p in list(run.iterdir()):
        if keep and p.name not in keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    before = _snapshot(run)
    err = _error(capsys, [*TINY, "--epochs", "1", "--output-dir", str(run)])
    assert err.startswith(f"error: {run} already holds a run (") and "continue it with --resume" in err
    assert "--overwrite" in err
    assert _snapshot(run) == before  # nothing written, nothing deleted


def test_a_runs_config_reused_as_config_starts_a_new_run(finished, tmp_path, capsys, monkeypatch):
    run = _copy(finished, tmp_path / "run")
    before = _snapshot(run)
    assert yaml.safe_load((run / "config.yaml").read_text())["output_dir"] is None
    monkeypatch.chdir(tmp_path)
    assert main(["--config", str(run / "config.yaml")]) == 0
    (new,) = (tmp_path / "runs").iterdir()  # runs/<model>-<time>, as without a config
    assert json.loads((new / "summary.json").read_text())["steps"] == 2 and _snapshot(run) == before

    old_style = yaml.safe_load((run / "config.yaml").read_text()) | {"output_dir": str(run)}  # written before the fix
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old_style))
    assert _error(capsys, ["--config", str(tmp_path / "old.yaml")]).startswith(f"error: {run} already holds a run")
    assert _snapshot(run) == before


def test_overwrite_replaces_the_runs_files_and_keeps_the_rest(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path / "run")
    (run / "evaluation-best-test-tta0.json").write_text("{}")  # an evaluate result of the old weights
    (run / "notes.txt").write_text("mine")
    assert main([*TINY, "--epochs", "1", "--batch-size", "32", "--output-dir", str(run), "--overwrite"]) == 0
    assert "starting over in" in capsys.readouterr().out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 4)]  # the new run's only: 128 / 32 steps
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000004.pt"]  # the old step-2 is gone
    assert yaml.safe_load((run / "config.yaml").read_text())["batch_size"] == 32
    assert not (run / "evaluation-best-test-tta0.json").exists() and (run / "notes.txt").read_text() == "mine"


def test_resume_into_another_runs_directory_is_refused(finished, tmp_path, capsys):
    a, b = _copy(finished, tmp_path / "a"), _copy(finished, tmp_path / "b")
    before = _snapshot(b)
    checkpoint = list_checkpoints(a / "checkpoints")[-1]
    assert _error(capsys, ["--resume", str(checkpoint), "--output-dir", str(b)]).startswith(f"error: {b} already holds")
    assert _snapshot(b) == before


def test_resume_of_a_finished_run_without_checkpoints_is_refused(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path / "run")
    shutil.rmtree(run / "checkpoints")
    before = _snapshot(run)
    err = _error(capsys, ["--output-dir", str(run), "--resume"])
    assert err.startswith(f"error: {run} holds config.yaml, metrics.jsonl, summary.json, model_best.safetensors, "
                          f"model_last.safetensors, curves.png but no checkpoint to continue; pass --overwrite")
    assert _snapshot(run) == before


def test_resume_and_overwrite_together_is_refused(finished, capsys):
    before = _snapshot(finished)
    err = _error(capsys, ["--output-dir", str(finished), "--resume", "--overwrite"])
    assert "but --overwrite would start its run again; give one of them" in err and _snapshot(finished) == before


@pytest.mark.parametrize("source", ["--variant", "--config"])
def test_resume_with_another_model_is_refused(source, finished, tmp_path, capsys):
    (tmp_path / "r5.yaml").write_text("model: lite_r5b2\n")
    value = "model0" if source == "--variant" else str(tmp_path / "r5.yaml")
    before = _snapshot(finished)
    err = _error(capsys, ["--output-dir", str(finished), "--resume", source, value])
    assert err.startswith(f"error: {source} {value} trains lite_r5b2 but the run resumed from ") and "lite_r4b2" in err
    assert _snapshot(finished) == before
    # the same model: the idiom `--variant P --output-dir D --resume` (start or continue) keeps the run's own config
    assert main(["--print-config", "--output-dir", str(finished), "--resume", "--variant", "model5"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["epochs"] == 1  # the run's, not model5's 70


def test_resume_with_more_epochs_restretches_the_schedule_and_says_so(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path / "run")
    assert main(["--output-dir", str(run), "--resume", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert ("note: the cosine schedule now spans 2 epochs (4 steps; it spanned 1 when saved): the learning rate goes "
            "from 0 to 0.0025 at step 2 and follows the new schedule from there") in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    new = lr_factor(ScheduleConfig(), steps_per_epoch=2, epochs=2)
    assert rows[1]["lr"] == pytest.approx(0.005 * new(3), rel=1e-12)  # epoch 2's last step on the 2-epoch cosine
    assert "note:" not in _resumed_again(run, capsys)  # the same length again: nothing to say


def test_resume_of_a_finished_run_says_it_is_finished_and_starts_nothing(finished, tmp_path, capsys, monkeypatch):
    """It used to say "resuming ... at epoch 2 step 2", print the final table again and open an empty W&B run."""
    run = _copy(finished, tmp_path / "run")
    before = _snapshot(run)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["--output-dir", str(run), "--resume"]) == 0
    acc = 100 * json.loads((run / "summary.json").read_text())["final_test_acc"]
    assert capsys.readouterr().out == (
        f"{run} is finished: 1 epoch trained, final test accuracy {acc:.2f}%; nothing to resume. To train it longer, "
        f"resume it with more epochs: python -m resnet_lite.train --output-dir {run} --resume --epochs 2\n")
    assert _snapshot(run) == before and not (run / "wandb").exists()


def test_resume_with_another_lr_uses_it_and_says_so(finished, tmp_path, capsys):
    """--lr with --resume: the schedule keeps its shape and length, at the new peak (the checkpoint's own scheduler
    state would keep the old one without a word)."""
    run = _copy(finished, tmp_path / "run")
    assert main(["--output-dir", str(run), "--resume", "--epochs", "2", "--lr", "0.002"]) == 0
    out = capsys.readouterr().out
    assert ("note: the cosine schedule now spans 2 epochs (4 steps; it spanned 1 when saved); optim.lr is now 0.002 "
            "(it was 0.005 when saved): the learning rate goes from 0 to 0.001 at step 2") in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    new = lr_factor(ScheduleConfig(), steps_per_epoch=2, epochs=2)
    assert rows[1]["lr"] == pytest.approx(0.002 * new(3), rel=1e-12)
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 0.002


def _resumed_again(run, capsys):
    assert main(["--output-dir", str(run), "--resume"]) == 0
    return capsys.readouterr().out


@pytest.mark.slow
def test_two_processes_refuse_together(finished, tmp_path):
    """torchrun, gloo: the main process looks, both stop with the error (exit 2), the main one says it; neither waits
    for the other."""
    run = _copy(finished, tmp_path / "run")
    before = _snapshot(run)
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    env.pop("RANK", None)
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "resnet_lite.train", *TINY,
           "--epochs", "1", "--output-dir", str(run)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert proc.stderr.count(f"error: {run} already holds a run") == 1, proc.stderr[-3000:]
    assert "[rank" not in proc.stderr and "exitcode  : 2" in proc.stderr
    assert _snapshot(run) == before


# ---------------------------------------------------------------------------------------------- nothing deleted unasked


@pytest.mark.parametrize("case", ["no-checkpoint-writes", "foreign-config"])
def test_bare_resume_without_a_checkpoint_never_deletes(case, finished, tmp_path, capsys):
    """--resume where there is no checkpoint used to turn into --overwrite and delete what the folder held: a run with
    checkpoint_every_epochs=0 killed at epoch 60 (metrics, model_best), or someone else's config.yaml."""
    run = _copy(finished, tmp_path / "run")
    shutil.rmtree(run / "checkpoints")
    if case == "no-checkpoint-writes":
        (run / "summary.json").unlink()
        (run / "model_last.safetensors").unlink()
    else:
        for p in list(run.iterdir()):
            p.unlink()
        (run / "config.yaml").write_text("lr: 0.1  # my own experiment's settings\n")
    before = _snapshot(run)
    err = _error(capsys, [*TINY, "--epochs", "1", "--output-dir", str(run), "--resume"])
    assert "but no checkpoint to continue; pass --overwrite to start the run again" in err
    assert _snapshot(run) == before


def test_bare_resume_restarts_a_run_killed_before_its_first_checkpoint(finished, tmp_path, capsys):
    """What a run writes before its first epoch ends (its own config.yaml, an empty metrics.jsonl) loses nothing when
    the run starts again: the sweep's `--resume` after an early interruption."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(finished / "config.yaml", run / "config.yaml")
    (run / "metrics.jsonl").write_text("")
    (run / "notes.txt").write_text("mine")
    assert main([*TINY, "--epochs", "1", "--output-dir", str(run), "--resume"]) == 0
    assert "no checkpoint in" in capsys.readouterr().out
    assert json.loads((run / "summary.json").read_text())["steps"] == 2 and (run / "notes.txt").read_text() == "mine"


def test_a_refused_or_failed_start_leaves_no_folder_behind(tmp_path, capsys):
    run = tmp_path / "new" / "run"
    _error(capsys, [*TINY, "--epochs", "1", "--output-dir", str(run), "--data", f"imagefolder:{tmp_path / 'nope'}"])
    assert not run.exists()


@pytest.mark.slow
def test_one_trainer_per_run_directory(tmp_path):
    """Two real trainers on one folder: the second gets one line naming the first's pid and host and changes nothing;
    once the first is killed (SIGKILL: no cleanup), the kernel has dropped its lock and --resume continues the run."""
    run = tmp_path / "run"
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    cmd = [sys.executable, "-m", "resnet_lite.train", *TINY, "--epochs", "50", "--output-dir", str(run)]
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(run / "checkpoints"):  # it holds the lock and has saved an epoch
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.2)
        second = subprocess.run([*cmd, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert second.stderr.startswith(f"error: {run} is in use by another trainer (pid {first.pid} on ")
        assert second.stderr.count("\n") == 1
    finally:
        first.kill()
        first.wait()
    third = subprocess.run([*cmd, "--epochs", "1", "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
    assert third.returncode == 0, third.stderr[-2000:]
