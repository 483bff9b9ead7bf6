"""Runs that survive crashes and preemption and resume exactly; bad input of every kind meets a one-line error.

Crashes are real: a subprocess kills itself with SIGKILL at a chosen point (RESNET_LITE_TEST_CRASH, see
resnet_lite.hooks), signals are sent to real processes (one, or a torchrun worker over gloo), and every
resumed run must end with weights bitwise equal to one uninterrupted run and a metrics.jsonl that reads as one run.
Runs are tiny (256 8x8 synthetic images, 4 steps per epoch, 3 epochs) so the file stays fast on two CPU cores.
"""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnet_lite.data import cifar
from resnet_lite.outputs.checkpoint import list_checkpoints
from resnet_lite.outputs.weights import load_weights
from resnet_lite.train import main
from resnet_lite.training.signals import EXIT_NONFINITE, EXIT_PREEMPTED

from support.formats import write_cifar_bin, write_imagefolder

BIN = Path(sys.executable).parent
# dropout (torch's RNG), EMA, a held-out split (best by val), every-3-step checkpoints: all of it must resume exactly
RUN = ["--data", "synthetic", "data.image_size=8", "data.synthetic_train=320", "data.holdout=64",
       "data.synthetic_test=64", "batch_size=64", "eval_batch_size=64", "epochs=3", "checkpoint_every_steps=3",
       "drop_rate=0.2", "ema.enabled=true", "ema.decay=0.9"]
TIMING = {"epoch_seconds", "images_per_second"}


pytestmark = pytest.mark.usefixtures("no_wandb")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Runs here and in the subprocesses use one thread: sums over another thread count round differently (not
    bitwise), and two threads on two busy cores are ten times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _env(**extra):
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", **extra)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "RESNET_LITE_TEST_CRASH"):
        if key not in extra:
            env.pop(key, None)
    return env


def _train_cmd(out, *extra):
    return [sys.executable, "-m", "resnet_lite.train", *RUN, "--output-dir", str(out), *extra]


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _steps(out):
    return [int(p.stem.split("-")[1]) for p in list_checkpoints(out / "checkpoints")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of RUN: the run directory every interrupted and resumed run must end up equal to."""
    out = tmp_path_factory.mktemp("reference") / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "disabled")
    assert main([*RUN, "--output-dir", str(out)]) == 0
    mp.undo()
    return out


def assert_same_run(out, reference):
    """Bitwise the same weights (EMA and raw), optimizer state and metrics, apart from timings."""
    a, b = load_weights(out / "model_last.safetensors")[0], load_weights(reference / "model_last.safetensors")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last, ref = (torch.load(list_checkpoints(d / "checkpoints")[-1], weights_only=True) for d in (out, reference))
    assert last["step"] == ref["step"] == 12
    for key in ("model", "ema"):
        assert all(torch.equal(last[key][k], ref[key][k]) for k in ref[key]), key
    for sa, sb in zip(last["optimizer"]["state"].values(), ref["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sb)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(_rows(out)) == strip(_rows(reference))  # one line per epoch, none twice, none missing
    assert [r["epoch"] for r in _rows(out)] == [1, 2, 3]
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    for key in ("final_test_acc", "final_test_loss", "best_test_acc", "best_val_acc", "best_val_epoch", "steps"):
        assert summary[key] == expected[key], key
    assert not list(out.rglob(".*.tmp"))  # leftovers of a write that was cut short are gone


# ---------------------------------------------------------------------------------------------- crash anywhere, resume


@pytest.mark.parametrize("crash, resumes_from", [
    ("step:7", 6),   # mid-epoch 2: the work since the step-6 checkpoint is lost, nothing else
    ("saved:4", 4),  # between epochs: epoch 1's checkpoint is complete, epoch 2 has not started
    ("save:8", 6),   # inside epoch 2's checkpoint write, after its metrics line: that line must not appear twice
])
def test_killed_anywhere_resumes_to_the_same_weights(tmp_path, reference, crash, resumes_from, capsys):
    out = tmp_path / "run"
    proc = subprocess.run(_train_cmd(out), env=_env(RESNET_LITE_TEST_CRASH=crash), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert _steps(out)[-1] == resumes_from
    if crash.startswith("save:"):
        assert list((out / "checkpoints").glob(".step-00000008.pt.*.tmp"))  # the write really was cut short
        assert [r["epoch"] for r in _rows(out)] == [1, 2]  # epoch 2's line is written before its checkpoint

    assert main(["--output-dir", str(out), "--resume"]) == 0
    assert f"resuming {out}/checkpoints/step-{resumes_from:08d}.pt" in capsys.readouterr().out
    assert_same_run(out, reference)


def test_unreadable_newest_checkpoint_falls_back_to_the_one_before(tmp_path, reference, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    newest = list_checkpoints(out / "checkpoints")[-1]
    assert newest.name == "step-00000012.pt" and _steps(out)[-2] == 9
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a disk that lost the file's end

    with pytest.raises(SystemExit) as e:  # named explicitly: an error, not a silent substitute
        main(["--resume", str(newest)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: cannot read checkpoint {newest}") and err.count("\n") == 1

    assert main(["--output-dir", str(out), "--resume"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith(f"warning: cannot read checkpoint {newest}")
    assert "using step-00000009.pt" in captured.err
    assert f"resuming {out}/checkpoints/step-00000009.pt" in captured.out
    assert_same_run(out, reference)  # and the damaged step 12 has been written again, whole


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path, capsys):
    """A fresh start would overwrite the run's metrics: when every checkpoint is damaged, say so and stop."""
    checkpoints = tmp_path / "run/checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "step-00000004.pt").write_bytes(b"PK\x03\x04 cut short")
    torch.save({"weights": torch.zeros(1)}, checkpoints / "step-00000008.pt")  # readable, but not a checkpoint
    with pytest.raises(SystemExit) as e:
        main([*RUN, "--output-dir", str(tmp_path / "run"), "--resume"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: no checkpoint in {checkpoints} can be read (newest: {checkpoints}/step-00000008.pt "
                          f"is not a resnet_lite checkpoint (no model, optimizer")
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == [
        "checkpoints", "step-00000004.pt", "step-00000008.pt"]


def test_checkpoints_kept_are_the_newest_and_the_best(reference):
    state = torch.load(list_checkpoints(reference / "checkpoints")[-1], weights_only=True)
    assert state["best_step"] in (4, 8, 12) and state["classes"] == [f"class{i}" for i in range(10)]
    assert _steps(reference) == sorted({9, 12, state["best_step"]})  # keep_checkpoints=2, plus the best epoch's
    assert isinstance(state["rng"]["python"], list) and state["rng"]["numpy"].dtype == torch.int64


# ---------------------------------------------------------------------------------------------- signals


def _start(cmd, tmp_path, **env):
    """Start a training process; return it once its run has started (the main process printed its first line)."""
    log = open(tmp_path / "stderr.log", "w+")
    proc = subprocess.Popen(cmd, env=_env(**env), stdout=subprocess.PIPE, stderr=log, text=True, cwd=tmp_path)
    for line in proc.stdout:
        if "run directory" in line:
            return proc, log
    proc.wait()
    pytest.fail(f"the run never started: {(tmp_path / 'stderr.log').read_text()[-2000:]}")


def _finish(proc, timeout=300):
    stdout, _ = proc.communicate(timeout=timeout)
    return stdout


def test_sigterm_saves_exits_75_and_resumes_exactly(tmp_path, reference, capsys):
    out = tmp_path / "run"
    proc, log = _start(_train_cmd(out), tmp_path)
    proc.send_signal(signal.SIGTERM)
    _finish(proc)
    log.seek(0)
    err = log.read()
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert "Traceback" not in err and "SIGTERM received: saving a checkpoint after this step" in err
    stopped = err.strip().splitlines()[-1]
    step = _steps(out)[-1]
    assert stopped.startswith(f"stopped by SIGTERM after step {step} ")
    assert stopped.endswith(f"--output-dir {out} --resume")
    assert step < 12 and not (out / "summary.json").exists()

    assert main(["--output-dir", str(out), "--resume"]) == 0
    assert f"resuming {out}/checkpoints/step-{step:08d}.pt" in capsys.readouterr().out
    assert_same_run(out, reference)


def test_a_second_signal_exits_at_once(tmp_path):
    out = tmp_path / "run"
    proc, log = _start(_train_cmd(out, "data.image_size=16"), tmp_path)  # slower steps: the first save is far off
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 120
    while "SIGINT received" not in (tmp_path / "stderr.log").read_text():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _finish(proc)
    assert proc.returncode == -signal.SIGINT  # killed by the signal itself, not a checkpoint and exit 75
    assert "stopped by" not in (tmp_path / "stderr.log").read_text()


def _worker(parent: int, rank: int) -> int | None:
    """pid of the torchrun worker of `rank` under `parent`, from /proc."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                if f"RANK={rank}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    return int(entry.name)
        except (OSError, IndexError):
            pass
    return None


@pytest.mark.slow
def test_sigusr1_to_one_torchrun_worker_stops_both_at_the_same_step_and_resumes_exactly(tmp_path):
    """Two gloo processes: a signal to rank 1 alone stops both after the same step (no hang), the main process saves
    it, both exit 75; resumed on two processes, the run ends bitwise equal to an uninterrupted two-process run."""
    def torchrun(out, report, *extra):
        return ([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "resnet_lite.train", *RUN,
                 "--output-dir", str(out), *extra],
                dict(ACCELERATE_USE_CPU="true", RESNET_LITE_RANK_REPORT=str(report)))

    cmd, env = torchrun(tmp_path / "whole", tmp_path / "whole-ranks")
    assert subprocess.run(cmd, env=_env(**env), capture_output=True, timeout=300).returncode == 0

    out, report = tmp_path / "run", tmp_path / "ranks"
    cmd, env = torchrun(out, report)
    proc, log = _start(cmd, tmp_path, **env)
    worker = _worker(proc.pid, 1)
    assert worker is not None
    os.kill(worker, signal.SIGUSR1)  # rank 1 only: rank 0 learns of it from rank 1
    stdout = _finish(proc, timeout=240)  # no hang
    log.seek(0)
    err = log.read()
    assert proc.returncode != 0, stdout + err  # torchrun reports a worker's 75 as its own failure, exit 1
    assert "exitcode  : 75" in err and "resnet_lite/" not in err  # torchrun's own traceback only, none of ours
    r0, r1 = (json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["stopped"] == r1["stopped"] == "SIGUSR1" and r0["step"] == r1["step"] < 12
    assert _steps(out)[-1] == r0["step"]  # the main process saved the step both stopped after
    assert f"stopped by SIGUSR1 on another process after step {r0['step']} " in err

    cmd, env = torchrun(out, report, "--resume")
    proc = subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming {out}/checkpoints/step-{r0['step']:08d}.pt" in proc.stdout
    for r in (0, 1):  # every process's weights and BatchNorm statistics (the raw model's are its own under EMA)
        resumed, whole = (json.loads((d / f"rank{r}.json").read_text()) for d in (report, tmp_path / "whole-ranks"))
        assert resumed["state_sha256"] == whole["state_sha256"]
    a, b = (load_weights(d / "model_last.safetensors")[0] for d in (out, tmp_path / "whole"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(_rows(out)) == strip(_rows(tmp_path / "whole"))


@pytest.mark.slow
def test_a_signal_in_an_epochs_last_step_stops_every_process_after_its_evaluation(tmp_path):
    """What a Slurm warning does when it lands on every process during an epoch's last step: the epoch is evaluated
    and saved once (its end-of-epoch checkpoint, by every process together), then both stop with exit 75. This hung
    when the main process, holding that checkpoint's path, went on to stop while the other saved again."""
    out = tmp_path / "run"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "resnet_lite.train", *RUN,
           "--output-dir", str(out)]
    proc = subprocess.run(cmd, env=_env(ACCELERATE_USE_CPU="true", RESNET_LITE_TEST_CRASH="usr1:4"),
                          capture_output=True, text=True, timeout=240)  # 4 steps an epoch: the first epoch's last
    assert "exitcode  : 75" in proc.stderr and "resnet_lite/" not in proc.stderr, proc.stderr[-3000:]
    assert f"stopped by SIGUSR1 after step 4 (epoch 1); saved {out}/checkpoints/step-00000004.pt" in proc.stderr
    assert [r["epoch"] for r in _rows(out)] == [1] and _steps(out)[-1] == 4


# ---------------------------------------------------------------------------------------------- a diverging run


def test_non_finite_loss_stops_naming_step_and_lr_and_keeps_the_good_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:  # SGD at lr 1e6 reaches nan within a few steps
        main([*RUN, "checkpoint_every_steps=1", "optim.name=sgd", "optim.lr=1e6", "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == EXIT_NONFINITE and err.count("\n") == 1 and "Traceback" not in err
    steps = _steps(out)
    assert steps, "diverged before the first checkpoint: raise optim.lr's divergence later"
    expected = (f"error: the training loss became nan at step {steps[-1] + 1} (epoch 1, lr ")
    assert err.startswith(expected) and f"the last good checkpoint is {out}/checkpoints/step-{steps[-1]:08d}.pt" in err
    assert "lower optim.lr" in err and "--resume" in err
    for path in list_checkpoints(out / "checkpoints"):  # nothing poisoned was saved
        state = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "summary.json").exists() and not (out / "model_last.safetensors").exists()


# ---------------------------------------------------------------------------------------------- bad input


def _bad(tmp, case):
    """(argv, how the one-line message starts) for one kind of user mistake, its files made under `tmp`."""
    out = str(tmp / "out")
    tiny = ["--data", "synthetic", "data.synthetic_train=64", "data.synthetic_test=16", "data.image_size=8",
            "--output-dir", out]
    if case == "unknown preset":
        return ["--variant", "modle5", *tiny], "error: unknown preset 'modle5'; did you mean model5"
    if case == "unknown model":
        return [*tiny, "model=lite_r9b9"], "error: unknown model 'lite_r9b9'; did you mean"
    if case == "mistyped setting":
        return [*tiny, "optim.lrr=0.1"], "error: unknown setting 'optim.lrr' in the overrides; did you mean 'optim.lr'?"
    if case == "mistyped flag":
        return [*tiny, "--learning-rate", "0.1"], ("error: unknown setting 'learning_rate' in the overrides; did you "
                                                   "mean 'optim.lr'?")
    if case == "wrong type":
        return [*tiny, "epochs=1.5"], "error: epochs must be an integer, got 1.5"
    if case == "negative lr":
        return [*tiny, "--lr", "-0.1"], "error: optim: lr=-0.1 must be > 0"
    if case == "batch 0":
        return [*tiny, "--batch-size", "0"], "error: batch_size=0 must be >= 1"
    if case == "epochs 0":
        return [*tiny, "--epochs", "0"], "error: epochs=0 must be >= 1"
    if case == "missing data":
        return [*tiny, "--data", f"imagefolder:{tmp}/nowhere"], f"error: imagefolder:{tmp}/nowhere needs"
    if case == "unreadable data":
        fake = write_cifar_bin(tmp / "data")
        batch = fake.folder / "data_batch_1.bin"
        batch.write_bytes(batch.read_bytes()[:-100])  # a copy cut short
        return [*tiny, "--data", "cifar10", "--data-dir", str(tmp / "data")], f"error: {batch} is truncated"
    if case == "corrupt image":
        write_imagefolder(tmp / "images")
        (tmp / "images/train/dog/0001.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
        return ([*tiny, "--data", f"imagefolder:{tmp}/images"],
                f"error: {tmp}/images/train/dog/0001.jpg cannot be read as an image")
    if case == "no network":
        return [*tiny, "--data", "cifar10", "--data-dir", str(tmp / "empty")], "error: cannot download http://127.0.0.1:"
    if case == "unwritable data directory":
        (tmp / "file").write_text("")
        return [*tiny, "--data", "cifar10", "--data-dir", str(tmp / "file")], f"error: cannot download into {tmp}/file"
    if case == "unwritable output directory":
        (tmp / "file").write_text("")
        return ([*tiny[:-1], str(tmp / "file/run")],
                f"error: cannot create the run directory {tmp}/file/run: {tmp}/file is a file")
    raise KeyError(case)


@pytest.mark.parametrize("case", ["unknown preset", "unknown model", "mistyped setting", "mistyped flag", "wrong type",
                                  "negative lr", "batch 0", "epochs 0", "missing data", "unreadable data",
                                  "corrupt image", "no network", "unwritable data directory",
                                  "unwritable output directory"])
def test_bad_input_is_one_line_and_leaves_nothing(case, tmp_path, capsys, monkeypatch, unreachable_url):
    monkeypatch.setitem(cifar.SOURCES, "cifar10", cifar.SOURCES["cifar10"].__class__(
        unreachable_url, cifar.SOURCES["cifar10"].md5, cifar.SOURCES["cifar10"].layouts))
    argv, message = _bad(tmp_path, case)
    with pytest.raises(SystemExit) as e:
        main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("resnet_lite: downloading")]
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith(message), lines
    assert not (tmp_path / "out").exists() and not (tmp_path / "file/run").exists()  # no run directory
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".part"))]  # nothing half-written


@pytest.mark.parametrize("change, message", [
    (["model=lite_r4b3"], "is of lite_r4b2, not lite_r4b3; resume with the run's own model"),
    (["--data", "imagefolder:{tmp}/images", "data.holdout=0"],
     "was trained on 10 classes, the data imagefolder:{tmp}/images has 3"),
])
def test_resume_from_a_run_of_another_model_or_class_count(change, message, reference, tmp_path, capsys):
    write_imagefolder(tmp_path / "images")
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*")}
    checkpoint = list_checkpoints(reference / "checkpoints")[-1]
    with pytest.raises(SystemExit) as e:
        main(["--resume", str(checkpoint), "--output-dir", str(tmp_path / "out"),
              *[c.replace("{tmp}", str(tmp_path)) for c in change]])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: checkpoint {checkpoint} ") and err.count("\n") == 1
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert not (tmp_path / "out").exists()
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*")} == before  # the run resumed from is untouched


def test_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, capsys):
    """A file size limit (RLIMIT_FSIZE) makes the kernel refuse writes past 1 MiB, as a full disk would."""
    out = tmp_path / "run"
    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, limits[1]))
    try:
        with pytest.raises(SystemExit) as e:
            main([*RUN, "epochs=1", "--output-dir", str(out)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: cannot write {out}/") and "(File too large); free some space" in err
    assert not list(out.rglob(".*.tmp"))
