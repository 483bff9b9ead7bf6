"""The Slurm recipes (launch/*.sbatch) on a real one-node Slurm that the session brings up (conftest's slurm_cluster,
tests/slurm.py): CPU-only jobs, the time-limit warning, the script's requeue and the resume inside the requeued job,
a multi-node rendezvous with two tasks standing in for two nodes, a sweep's grid as one job array.

Every job trains for real (resnet_lite.train from this interpreter's environment, passed on by sbatch's default
--export=ALL) on tiny synthetic data, one thread per process. Slurm holds a requeued job for about two minutes before
it may start again (its EligibleTime); the tests release it at once with `scontrol update JobId=... StartTime=now`,
the one thing they do that a user's job would not wait for.
"""
import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resnet_lite.outputs.weights import load_weights

from support import REPO
from support.slurm import free_port

BIN = Path(sys.executable).parent
# under pytest-xdist (-n auto; --dist loadgroup in pyproject.toml) every Slurm test runs on one worker: one
# cluster per session
pytestmark = pytest.mark.xdist_group("slurm")
# 256 8x8 images, batch 32: 8 steps an epoch, a checkpoint every 2 steps; 3 epochs so that a stop lands mid-run
RUN = ["--variant", "model5", "--data", "synthetic", "--wandb", "disabled", "data.image_size=8",
       "data.synthetic_train=256", "data.synthetic_test=64", "batch_size=32", "eval_batch_size=64", "epochs=3",
       "checkpoint_every_steps=2"]
CPU = ["--gpus-per-node=0", "--cpus-per-task=1"]  # the recipes ask for GPUs and 16+ CPUs; this node has 2 CPUs
CPU_TWO_TASKS = ["--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1"]  # slurm_1node: 2 processes
TWO_AS_NODES = ["--nodes=1", "--ntasks-per-node=2", *CPU]  # slurm_multi_node: 2 tasks standing in for 2 nodes
TESTED = [(CPU, "slurm_1node.sbatch"), (CPU_TWO_TASKS, "slurm_1node.sbatch"), (TWO_AS_NODES, "slurm_multi_node.sbatch")]


def _env(cluster, tmp_path, **extra):
    return cluster.env(dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1",
                            WANDB_MODE="disabled", WANDB_DIR=str(tmp_path), HF_HOME=str(tmp_path / "hf"), **extra))


class Job:
    """`sbatch --wait` of a recipe from the repository root: its id at once, its exit status and log when it ends."""

    def __init__(self, cluster, script, sbatch, args, env, log):
        self.cluster, self.log_path = cluster, log
        cmd = ["sbatch", "--wait", "--parsable", f"--output={log}", *sbatch, str(REPO / "launch" / script), *args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.proc.kill()
            pytest.fail(f"sbatch did not submit: {line} {self.proc.communicate()[1]}")
        self.id = line

    def info(self) -> dict:
        out = self.cluster.run("scontrol", "show", "job", self.id, check=False).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.is_file() else ""

    def wait_for(self, what, ready, timeout=240):
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.cluster.run("scancel", self.id, check=False)
                pytest.fail(f"job {self.id} ended or timed out before {what}:\n{self.log()[-4000:]}")
            time.sleep(0.2)

    def release_when_requeued(self, restarts=1):
        """Start the requeued job now rather than after Slurm's two-minute hold, once its first start has completed
        (a start released while the last one is COMPLETING gets that one's exit status)."""
        def requeued():
            info = self.info()
            return int(info.get("Restarts", 0)) >= restarts and info.get("JobState") == "PENDING"

        self.wait_for("its requeue", requeued)
        time.sleep(1)
        self.wait_for("its requeue", requeued)
        self.cluster.run("scontrol", "update", f"JobId={self.id}", "StartTime=now")

    def finish(self, timeout=300) -> int:
        try:
            self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cluster.run("scancel", self.id, check=False)
            pytest.fail(f"job {self.id} did not end:\n{self.log()[-4000:]}")
        return self.proc.returncode


def _checkpoints(run):
    return sorted((run / "checkpoints").glob("step-*.pt"))


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_warned_job_checkpoints_is_requeued_and_ends_bitwise_equal_to_an_uninterrupted_run(slurm_cluster, tmp_path):
    """USR1 to the batch shell (what --signal=B:USR1@120 does before the time limit): the trainer saves and exits,
    the script requeues the job, the same job resumes from that checkpoint and ends with the weights of one whole
    run."""
    with open(tmp_path / "whole.log", "w") as whole_log:  # meanwhile, on the other CPU
        reference = subprocess.Popen([sys.executable, "-m", "resnet_lite.train", *RUN, "--output-dir",
                                      str(tmp_path / "whole")], env=dict(os.environ, OMP_NUM_THREADS="1",
                                      WANDB_MODE="disabled"), stdout=whole_log, stderr=subprocess.STDOUT)
    run = tmp_path / "run"
    job = Job(slurm_cluster, "slurm_1node.sbatch", CPU, RUN, _env(slurm_cluster, tmp_path, RUN_DIR=str(run)),
              tmp_path / "job.out")
    job.wait_for("a first checkpoint", lambda: _checkpoints(run))
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", job.id)
    job.release_when_requeued()
    assert job.finish() == 0, job.log()
    log = job.log()
    assert f"job {job.id}, start 1: 0 GPU(s), 1 process(es), launch/cpu.yaml" in log
    assert "time limit near" in log and f"requeueing job {job.id}" in log
    assert log.count("USR1 received: saving a checkpoint") == 1  # from Slurm; none passed on by the launcher
    resumed = re.search(rf"resuming {re.escape(str(run))}\S* at epoch \d+ step (\d+)", log)
    assert f"job {job.id}, start 2:" in log and resumed, log
    assert 0 < int(resumed.group(1)) < 24  # mid-run: 3 epochs of 8 steps
    assert [r["epoch"] for r in _rows(run)] == [1, 2, 3]

    assert reference.wait(timeout=300) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    a = load_weights(run / "model_last.safetensors")[0]
    b = load_weights(tmp_path / "whole" / "model_last.safetensors")[0]
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


@pytest.mark.slow
def test_multi_node_recipe_with_two_tasks_as_two_machines_counts_every_test_image_once(slurm_cluster, tmp_path):
    """Two tasks on this node stand in for two nodes: each its own launcher and machine rank (from $SLURM_PROCID),
    one c10d rendezvous on the job's first host, world size 2 over gloo, the 101 test images shared out with none
    lost or counted twice. (The warning, requeue and resume go through the same lines as in slurm_1node.sbatch.)"""
    run, report = tmp_path / "run", tmp_path / "ranks"
    args = [*RUN, "data.synthetic_test=101", "epochs=1"]
    env = _env(slurm_cluster, tmp_path, RUN_DIR=str(run), MAIN_PORT=str(free_port()),
               RESNET_LITE_RANK_REPORT=str(report))
    job = Job(slurm_cluster, "slurm_multi_node.sbatch", TWO_AS_NODES, args, env, tmp_path / "job.out")
    assert job.finish() == 0, job.log()
    log = job.log()
    assert f"start 1: 2 task(s) x 1 process(es), launch/cpu.yaml, rendezvous {slurm_cluster.node}:" in log, log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["eval_samples"] == 101 and summary["steps"] == 8
    r0, r1 = (json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2 and r0["state_sha256"] == r1["state_sha256"]
    e0, e1 = set(r0["test_indices"]), set(r1["test_indices"])
    assert not e0 & e1 and e0 | e1 == set(range(101)) and r0["test_samples"] + r1["test_samples"] == 101
    t0, t1 = set(r0["train_indices_first_epoch"]), set(r1["train_indices_first_epoch"])
    assert len(t0) == len(t1) == 128 and t0 | t1 == set(range(256))


@pytest.mark.slow
def test_a_mistake_in_a_two_process_job_is_one_line(slurm_cluster, tmp_path):
    """A folder that does not exist, under slurm_1node.sbatch with two processes: the job's log holds the script's
    line, the main process's error and then only what the launcher (the ChildFailedError table, which
    tests/integration/test_launcher_errors.py reads line by line) and srun ("srun: error: ... Exited with exit code
    1") print of failed processes: no traceback of the trainer's, no peer's."""
    job = Job(slurm_cluster, "slurm_1node.sbatch", CPU_TWO_TASKS, [*RUN, "--data", "imagefolder:nope/"],
              _env(slurm_cluster, tmp_path, RUN_DIR=str(tmp_path / "run")), tmp_path / "job.out")
    assert job.finish() != 0
    log = job.log()
    lines = log.splitlines()
    assert lines[0].startswith(f"job {job.id}, start 1: 0 GPU(s), 2 process(es)"), log
    assert lines[1].startswith("error: imagefolder:nope needs nope/train/<class>/*"), log
    ours = [line for line in lines if "error: " in line and not line.startswith("srun: error: ")]  # srun's own
    assert len(ours) == 1 and "[rank" not in log and "resnet_lite/" not in log, log
    assert "requeueing" not in log and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_real_time_limit_warns_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path):
    """--time=1 --signal=B:USR1@5: Slurm itself warns the batch shell (its clock ticks every 30 s, so the warning
    comes 25-55 s into the job), both trainer processes (two tasks: cpu.yaml, two gloo processes) save, the script
    requeues, and the next start resumes from that checkpoint. The run is far longer than a minute: the test ends it
    once it has resumed."""
    run = tmp_path / "run"
    args = [*RUN, "epochs=1000"]
    job = Job(slurm_cluster, "slurm_1node.sbatch", [*CPU_TWO_TASKS, "--time=00:01:00", "--signal=B:USR1@5"], args,
              _env(slurm_cluster, tmp_path, RUN_DIR=str(run)), tmp_path / "job.out")
    job.wait_for("the warning", lambda: "time limit near" in job.log(), timeout=150)
    job.release_when_requeued()
    job.wait_for("the resume", lambda: re.search(r"resuming \S+ at epoch \d+ step \d+", job.log()), timeout=150)
    slurm_cluster.run("scancel", job.id)
    job.finish()
    log = job.log()
    saved = re.search(r"stopped by SIGUSR1 after step (\d+) \(epoch \d+\); saved (\S+?);", log)
    assert saved, log
    resumed = re.search(r"resuming (\S+) at epoch \d+ step (\d+)", log)
    assert Path(resumed.group(1)) == Path(saved.group(2)) and resumed.group(2) == saved.group(1)
    assert log.index("time limit near") < log.index(f"requeueing job {job.id}") < log.index(f"job {job.id}, start 2:")
    first = log[:log.index(f"job {job.id}, start 2:")]
    assert "0 GPU(s), 2 process(es), launch/cpu.yaml" in first and "on 2 x" in first
    assert first.count("USR1 received: saving a checkpoint") == 2  # each process once


@pytest.mark.slow
def test_sweep_grid_as_one_job_array_collected_with_wait_and_skipped_after(slurm_cluster, tmp_path):
    """`--launcher slurm` submits the grid's two runs as one array of slurm_1node.sbatch; the same command again, with
    --wait, finds that array queued, waits for it instead of submitting twice, and collects its results; a third time
    finds both finished."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "resnet_lite.sweep", "model5", "optim.lr=0.01,0.003", "--seeds", "1",
           "--output-dir", str(out), "--epochs", "1", "--data", "synthetic", "--batch-size", "64",
           "--wandb", "disabled", "data.synthetic_train=128", "data.synthetic_test=32", "data.image_size=8",
           "eval_batch_size=64",
           "--launcher", "slurm " + " ".join(CPU)]
    env = _env(slurm_cluster, tmp_path)
    names = ["lr0.01-seed0", "lr0.003-seed0"]

    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    job = json.loads((out / "slurm.json").read_text())["job"]
    assert json.loads((out / "slurm.json").read_text())["runs"] == names
    for i, name in enumerate(names):
        assert f"{name}: Slurm array task {job}_{i}, log {out / name / 'train.log'}" in first.stdout
    assert "2 run(s) queued on Slurm" in first.stderr
    tasks = slurm_cluster.run("squeue", "--noheader", f"--jobs={job}", "--array", "--format=%i").stdout.split()
    assert sorted(tasks) in ([f"{job}_0", f"{job}_1"], [])  # one array of two tasks (or already gone)

    second = subprocess.run([*cmd, "--wait"], env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr + second.stdout
    assert f"Slurm array {job} is still in the queue" in second.stdout or "finished earlier" in second.stdout
    assert json.loads((out / "slurm.json").read_text())["job"] == job  # not submitted twice
    for _i, name in enumerate(names):
        log = (out / name / "train.log").read_text()  # the task's own console, linked into its run folder
        assert "start 1: 0 GPU(s), 1 process(es)" in log and "lite_r4b2" in log
        config = (out / name / "config.yaml").read_text()
        assert f"lr: {name[2:].split('-')[0]}" in config and "seed: 0" in config
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["preset"], r["optim.lr"], r["seed"], r["status"]) for r in rows] == [
        ("lr0.01-seed0", "model5", "0.01", "0", "finished"), ("lr0.003-seed0", "model5", "0.003", "0", "finished")]
    assert "report_acc" not in rows[0] and "lr" not in rows[0]  # the report's Table 1 does not speak for changed runs
    md = (out / "results.md").read_text()
    assert "| run | preset | optim.lr | seed | model | epochs |" in md and "report acc" not in md
    assert (out / "results.png").stat().st_size > 0

    third = subprocess.run([*cmd, "--wait"], env=env, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0 and third.stdout.count("finished earlier, skipped") == 2, third.stderr
    assert json.loads((out / "slurm.json").read_text())["job"] == job


def test_launch_readme_shows_the_tested_cpu_commands_and_slurm_takes_them(slurm_cluster):
    """launch/README.md's commands for nodes without GPUs are the ones these tests submit, and this cluster's sbatch
    accepts them as written (--test-only: checked and placed, not run)."""
    readme = (REPO / "launch" / "README.md").read_text()
    for options, script in TESTED:
        line = re.search(rf"^sbatch {re.escape(' '.join(options))} launch/{script}( .*)?$", readme, re.M)
        assert line, f"sbatch {' '.join(options)} launch/{script}"
        proc = slurm_cluster.run("sbatch", "--test-only", *shlex.split(line.group(0))[1:], check=False, cwd=REPO)
        assert proc.returncode == 0 and "to start at" in proc.stderr, proc.stderr


def _default_run_dir(job):
    return REPO / "runs" / f"resnet_lite-{job.id}"  # where the recipes train when not told otherwise


@pytest.mark.slow
def test_a_users_output_dir_is_the_run_dir_and_what_the_requeued_job_resumes(slurm_cluster, tmp_path):
    """`sbatch slurm_1node.sbatch ... --output-dir=DIR`: the recipe used to append its own --output-dir after it, which
    argparse took instead, so the job trained in runs/<job name>-<job id>. Now DIR is the run directory of both
    starts."""
    run = tmp_path / "mine"
    job = Job(slurm_cluster, "slurm_1node.sbatch", CPU, [*RUN, f"--output-dir={run}"], _env(slurm_cluster, tmp_path),
              tmp_path / "job.out")
    try:
        job.wait_for("a first checkpoint", lambda: _checkpoints(run))
        slurm_cluster.run("scancel", "--batch", "--signal=USR1", job.id)
        job.release_when_requeued()
        assert job.finish() == 0, job.log()
        assert not _default_run_dir(job).exists()
    finally:
        shutil.rmtree(_default_run_dir(job), ignore_errors=True)
    log = job.log()
    assert f"start 1: 0 GPU(s), 1 process(es), launch/cpu.yaml, run dir {run}\n" in log
    assert f"start 2: 0 GPU(s), 1 process(es), launch/cpu.yaml, run dir {run}\n" in log
    assert f"requeueing job {job.id} to resume from {run}\n" in log
    assert re.search(rf"resuming {re.escape(str(run))}\S* at epoch \d+ step \d+", log), log
    assert [r["epoch"] for r in _rows(run)] == [1, 2, 3] and (run / "summary.json").is_file()


@pytest.mark.slow
def test_every_spelling_of_the_output_dir_is_the_run_dir_in_both_recipes(slurm_cluster, tmp_path):
    """--output-dir DIR, an abbreviation argparse takes (--output DIR), the override output_dir=DIR: each one is the run
    directory, in slurm_1node.sbatch and (two tasks as two machines) in slurm_multi_node.sbatch. Submitted together."""
    args = [*RUN, "epochs=1"]
    spellings = {"1node-flag": ("slurm_1node.sbatch", CPU, ["--output-dir", "{}"]),
                 "1node-abbreviation": ("slurm_1node.sbatch", CPU, ["--output", "{}"]),
                 "1node-override": ("slurm_1node.sbatch", CPU, ["output_dir={}"]),
                 "multi-node-flag": ("slurm_multi_node.sbatch", TWO_AS_NODES, ["--output-dir", "{}"])}
    jobs = {}
    try:
        for name, (script, sbatch, words) in spellings.items():
            run = tmp_path / name
            env = _env(slurm_cluster, tmp_path, MAIN_PORT=str(free_port()))
            jobs[name] = Job(slurm_cluster, script, sbatch, [*args, *(w.format(run) for w in words)], env,
                             tmp_path / f"{name}.out")
        for name, job in jobs.items():
            assert job.finish() == 0, job.log()
            assert f"run dir {tmp_path / name}\n" in job.log() and (tmp_path / name / "summary.json").is_file()
            assert not _default_run_dir(job).exists()
    finally:
        for job in jobs.values():
            if job.proc.poll() is None:
                slurm_cluster.run("scancel", job.id, check=False)
                job.proc.wait()
            shutil.rmtree(_default_run_dir(job), ignore_errors=True)


SHIM = """#!/bin/bash
# {name} as a busy controller's: slow before it reaches Slurm (SHIM_SLOW=before-{name}) or after (after-{name})
echo "$*" >>"{log}"
if [[ ${{SHIM_SLOW:-}} == before-{name} ]]; then sleep 20; fi
{real} "$@"
rc=$?
touch "{log}.done"
if [[ ${{SHIM_SLOW:-}} == after-{name} ]]; then sleep 20; fi
exit $rc
"""


@pytest.mark.slow
def test_an_sbatch_or_squeue_that_does_not_answer_never_submits_an_array_twice(slurm_cluster, tmp_path):
    """Real sbatch and squeue behind PATH shims that answer late, the sweep's SLURM_TIMEOUT set to 3 s. Timeouts are
    one-line errors; an sbatch that submitted but did not answer in time, or whose sweep was killed while it hung,
    leaves an array that the sweep (then or on its next run) finds by the comment it wrote to slurm.json before calling
    sbatch, and never submits again. The arrays are held (--hold): this is about what is submitted, not what runs."""
    shims = tmp_path / "shims"
    shims.mkdir()
    for name in ("sbatch", "squeue"):
        shim = shims / name
        shim.write_text(SHIM.format(name=name, log=tmp_path / f"{name}.calls", real=shutil.which(name)))
        shim.chmod(0o755)
    env = _env(slurm_cluster, tmp_path)
    env["PATH"] = f"{shims}{os.pathsep}{env['PATH']}"

    def sweep(out, timeout=30, slow=""):
        code = (f"import sys, resnet_lite.sweep.slurm as s; s.SLURM_TIMEOUT = {timeout}; "
                "from resnet_lite.sweep.__main__ import main; sys.exit(main(sys.argv[1:]))")
        return [sys.executable, "-c", code, "model5", "optim.lr=0.01,0.003", "--output-dir", str(out), "--epochs", "1",
                "--data", "synthetic", "--wandb", "disabled", "--launcher", "slurm --hold " + " ".join(CPU)], \
            dict(env, SHIM_SLOW=slow)

    def submissions():
        path = tmp_path / "sbatch.calls"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def arrays(out):
        mark = json.loads((out / "slurm.json").read_text()).get("comment")
        rows = slurm_cluster.run("squeue", "--noheader", "--states=all", "--format=%F %k").stdout.split("\n")
        return {line.split()[0] for line in rows if line.strip() and line.split()[1:] == [mark]}

    def one_error_line(proc, message):
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], \
            proc.stderr

    try:
        # sbatch hangs before it reaches Slurm: nothing is submitted; one line, and slurm.json says it was submitting
        first = tmp_path / "first"
        cmd, cmd_env = sweep(first, timeout=3, slow="before-sbatch")
        proc = subprocess.run(cmd, env=cmd_env, capture_output=True, text=True, timeout=120)
        one_error_line(proc, "sbatch did not answer in 3 s and its array is not in the queue (yet)")
        assert submissions() == 1 and "submitting" in json.loads((first / "slurm.json").read_text())

        # sbatch submits, then hangs: the sweep finds the array it submitted and reports it queued
        cmd, cmd_env = sweep(first, timeout=3, slow="after-sbatch")
        proc = subprocess.run(cmd, env=cmd_env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        record = json.loads((first / "slurm.json").read_text())
        assert f"sbatch did not answer in 3 s but submitted array {record['job']}" in proc.stdout
        assert submissions() == 2 and arrays(first) == {record["job"]} and "submitting" not in record
        # and the same command again waits for it, or reports it, without submitting
        cmd, cmd_env = sweep(first)
        proc = subprocess.run(cmd, env=cmd_env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and f"Slurm array {record['job']} is still in the queue" in proc.stdout, proc.stderr
        assert submissions() == 2 and arrays(first) == {record["job"]}

        # a sweep killed while sbatch hangs after submitting: its next run finds the array, once squeue answers
        second = tmp_path / "second"
        cmd, cmd_env = sweep(second, timeout=120, slow="after-sbatch")
        (tmp_path / "sbatch.calls.done").unlink()
        killed = subprocess.Popen(cmd, env=cmd_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not (tmp_path / "sbatch.calls.done").exists():  # the real sbatch has submitted; the shim hangs on
            assert killed.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        killed.kill()
        killed.wait()
        assert "submitting" in json.loads((second / "slurm.json").read_text())
        cmd, cmd_env = sweep(second, timeout=3, slow="before-squeue")
        proc = subprocess.run(cmd, env=cmd_env, capture_output=True, text=True, timeout=120)
        one_error_line(proc, "cannot tell whether the sweep's last sbatch submitted its array (squeue did not answer")
        cmd, cmd_env = sweep(second)
        proc = subprocess.run(cmd, env=cmd_env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        record = json.loads((second / "slurm.json").read_text())
        assert f"Slurm array {record['job']} was submitted by an earlier run of this sweep" in proc.stdout
        assert f"Slurm array {record['job']} is still in the queue" in proc.stdout
        assert submissions() == 3 and arrays(second) == {record["job"]}
        assert os.readlink(second / "lr0.003" / "train.log") == f"../slurm-{record['job']}_1.out"
    finally:
        slurm_cluster.cancel_all()
