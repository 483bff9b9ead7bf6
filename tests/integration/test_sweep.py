"""sweep: a real two-preset study with tiny settings, stopped mid-run, resumed two runs at a time, then skipped;
the tables and the figure it leaves; one-line errors before anything starts."""
import contextlib
import csv
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from resnet_lite.sweep.__main__ import main
from resnet_lite.sweep.plan import plan_runs

TINY = ["--epochs", "2", "--data", "synthetic", "--batch-size", "32", "--wandb", "disabled", "data.synthetic_train=256",
        "data.synthetic_test=64", "data.image_size=8", "eval_batch_size=64", "checkpoint_every_steps=4"]
PRESETS = ["model5", "model8"]


def _sweep(out, *extra):
    return [sys.executable, "-m", "resnet_lite.sweep", *PRESETS, "--output-dir", str(out), *TINY, *extra]


def _env():
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _wait_for_a_checkpoint(proc, out):
    deadline = time.monotonic() + 240
    while not list((out / "model5" / "checkpoints").glob("step-*.pt")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the sweep wrote no checkpoint: {proc.communicate()}")
        time.sleep(0.05)


def _interrupt_after_first_checkpoint(out):
    proc = subprocess.Popen(_sweep(out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_a_checkpoint(proc, out)
    proc.send_signal(signal.SIGTERM)  # what `kill` or a cluster's cancel sends
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_interrupted_sweep_resumes_and_writes_tables_and_figure(tmp_path):
    out = tmp_path / "sweep"
    rc, stdout, stderr = _interrupt_after_first_checkpoint(out)
    assert rc == 130, stderr
    trainer = int(re.search(r"model5: started \(pid (\d+)\)", stdout).group(1))
    assert not _pid_alive(trainer)  # the sweep stopped its trainer rather than orphaning it
    assert not (out / "model5" / "summary.json").exists() and not (out / "model8").exists()
    md = (out / "results.md").read_text()
    assert re.search(r"\| model5 \|.*\| interrupted \|", md) and re.search(r"\| model8 \|.*\| not started \|", md)

    # again, two at a time: model5 continues from its checkpoint while model8 starts
    proc = subprocess.run(_sweep(out, "--gpus", "0,1"), env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"model[58]: started on GPU [01]", line)]
    finishes = [i for i, line in enumerate(lines) if re.match(r"model[58]: finished, best", line)]
    assert len(starts) == len(finishes) == 2 and max(starts) < min(finishes)  # both ran at once
    log5 = (out / "model5" / "train.log").read_text()
    assert "resuming" in log5 and "CUDA_VISIBLE_DEVICES=0 " in log5
    assert "CUDA_VISIBLE_DEVICES=1 " in (out / "model8" / "train.log").read_text()
    metrics = [json.loads(line) for line in (out / "model5" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and [m["step"] for m in metrics] == [8, 16]

    summaries = {p: json.loads((out / p / "summary.json").read_text()) for p in PRESETS}
    with open(out / "results.csv", newline="") as f:
        rows = {r["preset"]: r for r in csv.DictReader(f)}
    assert list(rows) == PRESETS
    for preset, report_acc, model in (("model5", "91.47", "lite_r4b2"), ("model8", "91.24", "lite_r4b3")):
        row, s = rows[preset], summaries[preset]
        assert (row["report_acc"], row["model"], row["status"], row["epochs"]) == (report_acc, model, "finished", "2")
        assert (row["batch"], row["optimizer"], row["lr"]) == ("32", "adam", "0.01")  # what ran, not the report's 128
        assert float(row["best_acc"]) == pytest.approx(100 * s["best_test_acc"], abs=1e-4)
        assert float(row["final_acc"]) == pytest.approx(100 * s["final_test_acc"], abs=1e-4)
        assert int(row["params"]) == s["params"] and float(row["seconds"]) > 0
    md = (out / "results.md").read_text()
    assert ("| preset | report model | report acc % | model | batch | optimizer | lr | epochs | best acc % |"
            in md)
    assert "| model5 | 5 | 91.47 | lite_r4b2 | 32 | adam | 0.01 | 2 |" in md
    assert "--epochs 2 --data synthetic" in md  # the shared settings are stated beside the report's numbers
    with Image.open(out / "results.png") as png:
        assert png.format == "PNG" and png.size[0] > 600

    # a third time: nothing left to do
    mtimes = {p: (out / p / "summary.json").stat().st_mtime_ns for p in PRESETS}
    proc = subprocess.run(_sweep(out), env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.count("finished earlier, skipped") == 2
    assert mtimes == {p: (out / p / "summary.json").stat().st_mtime_ns for p in PRESETS}


@pytest.mark.slow
def test_a_run_stopped_by_its_own_signal_is_reported_resumable(tmp_path):
    """A trainer preempted on its own (a cluster signals the job step): exit 75, not a failure, for the run and the
    sweep."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "resnet_lite.sweep", "model5", "--output-dir", str(out), *TINY]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = ""
    while "started" not in first and proc.poll() is None:
        first += proc.stdout.readline()
    trainer = int(re.search(r"model5: started \(pid (\d+)\)", first).group(1))
    _wait_for_a_checkpoint(proc, out)
    os.kill(trainer, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    stdout = first + stdout
    assert proc.returncode == 75, stderr
    assert "model5: interrupted by a signal after saving a checkpoint" in stdout and "FAILED" not in stdout
    assert "run the same command to resume them" in stderr
    assert re.search(r"\| model5 \|.*\| interrupted \(exit 75\)", (out / "results.md").read_text())


@pytest.mark.slow
def test_a_closed_terminal_stops_the_trainers_as_sigterm_does(tmp_path):
    """Closing the sweep's terminal sends it SIGHUP. Its trainers sit in sessions of their own, out of the terminal's
    reach: the sweep must stop them (each saves a checkpoint) rather than die and leave them running orphaned."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "resnet_lite.sweep", "model5", "--output-dir", str(out), *TINY, "--epochs", "50"]
    pid, terminal = pty.fork()  # the sweep leads a session whose controlling terminal is this pty
    if pid == 0:
        try:
            os.execve(sys.executable, cmd, _env())
        finally:
            os._exit(127)
    trainer, seen, status, deadline = None, b"", None, time.monotonic() + 240
    try:
        while trainer is None or not list((out / "model5" / "checkpoints").glob("step-*.pt")):
            assert time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG)[0] == 0, seen.decode(errors="replace")
            if select.select([terminal], [], [], 0.05)[0]:
                seen += os.read(terminal, 4096)
                found = re.search(rb"model5: started \(pid (\d+)\)", seen)
                trainer = int(found.group(1)) if found else None
        os.close(terminal)  # the terminal goes: the kernel sends SIGHUP to the session's leader, the sweep
        while status is None:
            assert time.monotonic() < deadline, "the sweep did not exit after SIGHUP"
            time.sleep(0.1)
            done, code = os.waitpid(pid, os.WNOHANG)
            status = os.waitstatus_to_exitcode(code) if done else None
        assert not _pid_alive(trainer)  # stopped, and waited for, by the sweep
    finally:
        if trainer and _pid_alive(trainer):
            os.killpg(trainer, signal.SIGKILL)
        if status is None:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    assert status == 130, status  # the sweep's interrupted exit, not killed by the signal
    log = (out / "model5" / "train.log").read_text()
    assert "SIGTERM received: saving a checkpoint" in log and re.search(r"stopped by SIGTERM after step \d+", log), log
    assert re.search(r"\| model5 \|.*\| interrupted \|", (out / "results.md").read_text())


@pytest.mark.parametrize("argv, message", [
    (["model55"], "unknown preset 'model55'; did you mean model5"),
    (["model5", "optim.lrr=0.1"], "unknown setting 'optim.lrr'"),
    (["model5", "--gpus", "zero"], "--gpus zero is not a comma-separated list"),
    (["model5", "model5"], "listed twice"),
    (["model5", "optim.lr=0.1,fast"], "optim.lr must be a number, got 'fast'"),  # every value of a grid is checked
    (["model5", "optim.lr=0.1,"], "optim.lr=0.1, has an empty value"),
    (["model5", "--seeds", "0"], "--seeds 0 must be >= 1"),
    (["model5", "seed=3", "--seeds", "2"], "--seeds and a seed= setting both choose the seeds"),
    (["model5", "--launcher", "local --fast"], "local takes nothing after it"),
    (["model5", "--wait"], "--wait is for --launcher slurm"),
    (["model5", "--launcher", "slurm", "--gpus", "0"], "--gpus is for runs on this machine"),
    (["model5", "--launcher", 'slurm "--time=1'], "--launcher slurm \"--time=1: No closing quotation"),
    (["model5", "--launcher", " "], "--launcher is empty"),
    (["model5", "--launcher", "slurm --comment=mine"], "the sweep sets sbatch's --comment itself"),
])
def test_mistakes_stop_before_any_run(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("setting", ["output_dir={tmp}/shared", "output_dir={tmp}/a,{tmp}/b"])
def test_an_output_dir_setting_is_refused_naming_the_sweeps_own_folder(tmp_path, capsys, setting):
    """Every run would train in (or resume from) that one folder; --output-dir is the sweep's, each run gets its own."""
    quick = ["--epochs", "1", "--data", "synthetic", "--batch-size", "32", "--wandb", "disabled", "data.image_size=8",
             "data.synthetic_train=64", "data.synthetic_test=32"]  # what runs, should the setting not be refused
    with pytest.raises(SystemExit) as exit_info:
        main(["model5", setting.format(tmp=tmp_path), "--output-dir", str(tmp_path / "sweep"), *quick])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "would put every run of the sweep in one folder" in err and "--output-dir, the sweep's folder" in err
    assert list(tmp_path.iterdir()) == []


def test_a_grid_names_its_runs_by_what_differs():
    runs, shared, grid = plan_runs(["model5"], ["optim.lr=0.01,0.003", "data.image_size=8", "optim.betas=[0.9,0.99]"],
                                   seeds=2)
    assert [r.name for r in runs] == ["lr0.01-seed0", "lr0.01-seed1", "lr0.003-seed0", "lr0.003-seed1"]
    assert runs[1].overrides == ["optim.lr=0.01", "seed=1"] and {r.preset for r in runs} == {"model5"}
    assert shared == ["data.image_size=8", "optim.betas=[0.9,0.99]"]  # a list is one value
    assert grid == ["optim.lr", "seed"]
    runs, _, _ = plan_runs(["model5", "model8"], ["optim.lr=0.01,0.003", "ema.decay=0.9,0.99"])
    assert [r.name for r in runs][:2] == ["model5-lr0.01-decay0.9", "model5-lr0.01-decay0.99"] and len(runs) == 8
    assert [r.name for r in plan_runs(["model5", "model8"], ["optim.lr=0.1"])[0]] == ["model5", "model8"]  # presets


@pytest.mark.slow
def test_local_grid_sweep_tables_show_each_runs_settings(tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "resnet_lite.sweep", "model5", "optim.lr=0.01,0.003", "--launcher", "local",
           "--output-dir", str(out), *TINY, "--epochs", "1", "--gpus", "0,1"]  # both at once on 2 cores
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["optim.lr"], r["status"], r["epochs"]) for r in rows] == [("lr0.01", "0.01", "finished", "1"),
                                                                                 ("lr0.003", "0.003", "finished", "1")]
    assert "lr: 0.003" in (out / "lr0.003" / "config.yaml").read_text()
    md = (out / "results.md").read_text()
    assert md.startswith("# Sweep results\n") and "| run | preset | optim.lr | model | epochs |" in md
    assert "report acc" not in md and "| lr0.003 | model5 | 0.003 | lite_r4b2 | 1 |" in md
