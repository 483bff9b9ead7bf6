"""Running a sweep's runs as one Slurm job array of launch/slurm_1node.sbatch, submitted once, waited for, collected."""
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from ..errors import UserError
from ..outputs.files import write_text
from .plan import PlannedRun
from .results import _finished, collect, write_results

__all__ = ["run_on_slurm"]

SLURM_POLL = (2, 10)  # seconds between looks at a Slurm array's queue: the first, growing to the most
SLURM_TIMEOUT = 120  # seconds an sbatch or squeue may take to answer (a busy controller) before the sweep stops waiting
def _slurm(*cmd, env=None) -> subprocess.CompletedProcess | None:
    """Slurm's `cmd` run to its end; None when it has not answered within SLURM_TIMEOUT."""
    if not shutil.which(cmd[0]):
        raise UserError(f"--launcher slurm needs Slurm's {cmd[0]} on PATH; run the sweep where you run sbatch")
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=SLURM_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None


def _in_queue(job: str) -> bool | None:
    """Whether any task of array `job` is pending, running or completing; None when Slurm could not be asked."""
    proc = _slurm("squeue", "--noheader", f"--jobs={job}", "--format=%i")
    if proc is None:
        return None
    if proc.returncode == 0:
        return bool(proc.stdout.strip())
    return False if "Invalid job id" in proc.stderr else None


def _find_array(mark: str) -> str | None:
    """The id of the array submitted with --comment=`mark` while Slurm still lists it (in any state), else None; a
    UserError when squeue cannot say, since submitting then might run every task twice."""
    proc = _slurm("squeue", f"--user={os.getuid()}", "--noheader", "--states=all", "--format=%F %k")
    if proc is None or proc.returncode != 0:
        why = f"squeue did not answer in {SLURM_TIMEOUT} s" if proc is None else f"squeue failed: {proc.stderr.strip()}"
        raise UserError(f"cannot tell whether the sweep's last sbatch submitted its array ({why}); run the same "
                        "command again once squeue answers")
    for line in proc.stdout.splitlines():
        job, _, comment = line.strip().partition(" ")
        if comment == mark:
            return job
    return None


def _record_array(out_dir: Path, job: str, mark: str, names: list[str], echo) -> None:
    """OUTPUT_DIR/slurm.json for the submitted array, and each run's train.log a link to its task's console."""
    write_text(out_dir / "slurm.json", json.dumps({"job": job, "comment": mark, "runs": names}) + "\n")
    for i, name in enumerate(names):
        log = out_dir / name / "train.log"
        if log.is_symlink() or not log.exists():  # its console, as a local run's would be
            link = log.with_name(".train.log.new")
            link.unlink(missing_ok=True)
            link.symlink_to(f"../slurm-{job}_{i}.out")
            link.replace(log)
        echo(f"{name}: Slurm array task {job}_{i}, log {log}")


def _submit_array(runs: list[PlannedRun], out_dir: Path, train_args, sbatch_args, echo) -> str:
    """One job array of launch/slurm_1node.sbatch, task i running runs[i] (its directory and arguments in
    OUTPUT_DIR/slurm-tasks/i, which the script reads through ARRAY_TASKS); returns the array's job id."""
    from ..launch import recipe

    tasks = out_dir / "slurm-tasks"
    tasks.mkdir(exist_ok=True)
    for old in tasks.iterdir():
        old.unlink()
    for i, run in enumerate(runs):
        words = ["--variant", run.preset, *train_args, *run.overrides]
        if any("\n" in w for w in words):
            raise UserError(f"{run.name}: a setting holds a line break, which a Slurm array task cannot be given")
        (out_dir / run.name).mkdir(parents=True, exist_ok=True)
        write_text(tasks / str(i), "\n".join([str((out_dir / run.name).resolve()), *words]) + "\n")
    script = Path(str(recipe("slurm_1node.sbatch")))
    # the sweep's own environment for every task (sbatch passes it on): its Python first on PATH
    env = dict(os.environ, ARRAY_TASKS=str(tasks.resolve()), LAUNCH_DIR=str(script.parent),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    # A mark of this submission, recorded before sbatch runs: an sbatch that submits and then times out, or a sweep
    # killed while it waits, leaves the array findable by its comment, so the next run never submits it again.
    mark, names = f"resnet_lite-sweep-{uuid.uuid4().hex[:16]}", [run.name for run in runs]
    write_text(out_dir / "slurm.json", json.dumps({"submitting": mark, "runs": names}) + "\n")
    cmd = ["sbatch", "--parsable", f"--array=0-{len(runs) - 1}", f"--output={out_dir.resolve()}/slurm-%A_%a.out",
           *sbatch_args, f"--comment={mark}", str(script)]
    proc = _slurm(*cmd, env=env)
    if proc is None:
        job = _find_array(mark)
        if job is None:
            raise UserError(f"sbatch did not answer in {SLURM_TIMEOUT} s and its array is not in the queue (yet); the "
                            "same command looks for it again before it submits anything")
        echo(f"sbatch did not answer in {SLURM_TIMEOUT} s but submitted array {job}")
    elif proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise UserError(f"sbatch did not take the array ({reason}); check the options after --launcher slurm")
    else:
        job = proc.stdout.strip().split(";")[0]
    _record_array(out_dir, job, mark, names, echo)
    return job


def run_on_slurm(runs, pending, out_dir, train_args, sbatch_args, *, settings, grid, wait, echo) -> list[dict]:
    previous = json.loads((out_dir / "slurm.json").read_text()) if (out_dir / "slurm.json").is_file() else None
    if previous and "submitting" in previous:  # an sbatch that did not answer, or a sweep killed while it waited
        job = _find_array(previous["submitting"])
        if job:
            echo(f"Slurm array {job} was submitted by an earlier run of this sweep that did not hear back from sbatch")
            _record_array(out_dir, job, previous["submitting"], previous["runs"], echo)
            previous = {"job": job, "runs": previous["runs"]}
        else:
            previous = None  # it never reached Slurm, or has ended and left the queue: its runs say what is done
    if previous and _in_queue(previous["job"]) is not False:  # never submit a run that is still queued
        job, queued = previous["job"], [name for name in previous["runs"] if name in {r.name for r in runs}]
        echo(f"Slurm array {job} is still in the queue ({', '.join(queued)}): waiting for it, not submitting again"
             if wait else f"Slurm array {job} is still in the queue ({', '.join(queued)}): not submitting again")
        later = [run.name for run in pending if run.name not in queued]
        if later:
            echo(f"{', '.join(later)}: not in that array; run the same command again once it has ended")
    elif pending:
        job, queued = _submit_array(pending, out_dir, train_args, sbatch_args, echo), [run.name for run in pending]
    else:
        job, queued = None, []
    status = {name: f"queued in Slurm array {job}" for name in queued}
    if job and wait:
        done, silent_since = set(), None
        delay: float = SLURM_POLL[0]  # seconds, growing by half after each look
        try:
            while True:
                here = _in_queue(job)
                for name in queued:
                    if name not in done and (out_dir / name / "summary.json").is_file():
                        done.add(name)
                        echo(_finished(out_dir, name))
                        write_results(out_dir, collect(out_dir, runs, status), settings, grid)
                if here is False:
                    break
                silent_since = (silent_since or time.monotonic()) if here is None else None
                if silent_since and time.monotonic() - silent_since > 300:
                    raise UserError(f"squeue has not answered for 5 minutes; array {job} may still run: the same "
                                    "command with --wait collects it")
                time.sleep(delay)
                delay = min(SLURM_POLL[1], delay * 1.5)
        except KeyboardInterrupt:
            echo(f"Slurm array {job} goes on without the sweep; the same command with --wait collects it "
                 f"(scancel {job} stops it)")
            write_results(out_dir, collect(out_dir, runs, status), settings, grid)
            raise
        status = {name: f"failed: see {out_dir / name / 'train.log'}" for name in queued
                  if not (out_dir / name / "summary.json").is_file()}
    elif job:
        echo(f"the same command with --wait waits for array {job} and collects it")
    rows = collect(out_dir, runs, status)
    write_results(out_dir, rows, settings, grid)
    return rows
