"""benchmarks/gpu_run.sh as the GPU machine runs it (issues 11, 21): a fresh copy of the checkout, a Python that has
torch, timm and accelerate but NOT resnet_lite (that machine has no network to pip install), started from the copy's
root. `--dry-run` takes the same path on the CPU with tiny settings: every stage must run and leave its numbers; with
a budget too small for every stage it must still leave a summary.md that says what was skipped or cut, and a second
call (--continue) must finish what the first did not. The benchmarks' failure paths (a failed compile, a non-finite
loss, a failed training process) are checked on their own, in seconds.
"""
import json
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest
import torch

from support import REPO, fresh_copy
from support.formats import CIFAR10_CLASSES, write_imagefolder

sys.path.insert(0, str(REPO / "benchmarks"))
import throughput  # noqa: E402
import time_to_accuracy  # noqa: E402

OUT_FILES = {"gpu_run.log", "summary.md", "throughput.json", "tta_fast.json", "tta_model5.json",
             "lite_r4b2.fast94.safetensors", "lite_r4b2.fast94.json"}  # the device tool brings back 8 at most


def _bare_python(dest: Path) -> Path:
    """A venv that sees this environment's packages (torch, timm, accelerate...) through one .pth line. The line adds
    the folder only: the .pth files inside it, among them an editable install's finder for resnet_lite, are not read.
    wandb is hidden (a package of that name that fails to import, ahead of the line), as the GPU machine has none."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    python = dest / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    Path(site, "wandb").mkdir()
    Path(site, "wandb", "__init__.py").write_text("raise ImportError(\"No module named 'wandb'\")\n")
    return python


def _tiny_archive(path: Path) -> Path:
    """An archive laid out as ../shared/data/cifar10-jpeg.tar.gz (cifar10-jpeg/{train,test}/<class>/*.jpg)."""
    root = path.parent / "staging" / "cifar10-jpeg"
    write_imagefolder(root, classes=CIFAR10_CLASSES, counts={"train": 24, "test": 12}, size=(32, 32), formats=("jpg",))
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root, arcname="cifar10-jpeg")
    return path


def _dry_run(clone, python, tmp_path, out, *args, scratch=None, **env_extra):
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHON": str(python), "OUT": str(out),
           "SCRATCH": str(scratch or tmp_path / "scratch"), "ARCHIVE": str(tmp_path / "c10.tar.gz"),
           "OMP_NUM_THREADS": "2", **env_extra}
    if not (tmp_path / "c10.tar.gz").exists():
        _tiny_archive(tmp_path / "c10.tar.gz")
    proc = subprocess.run(["bash", "benchmarks/gpu_run.sh", "--dry-run", *args], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


def _bare_setup(tmp_path):
    clone = fresh_copy(tmp_path / "clone")
    python = _bare_python(tmp_path / "bare")
    for missing in ("resnet_lite", "wandb"):
        probe = subprocess.run([str(python), "-c", f"import torch, timm, accelerate\nimport {missing}"], cwd=tmp_path,
                               capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert f"No module named '{missing}'" in probe.stderr, f"the bare Python must have torch etc. but not {missing}"
    return clone, python


@pytest.mark.slow
@pytest.mark.timeout(1200)  # about 2 minutes alone; the whole GPU flow, so more on a loaded machine
def test_dry_run_from_a_fresh_copy_with_a_bare_python(tmp_path):
    clone, python = _bare_setup(tmp_path)
    out = tmp_path / "out"
    rc, log = _dry_run(clone, python, tmp_path, out)
    assert rc == 0, log[-4000:]
    assert f"from {clone}/resnet_lite/__init__.py" in log  # the checkout's package, found without an install
    assert "preflight ok; 240 train / 120 test images" in log
    for stage in ("throughput", "fast", "compile", "model5"):
        assert f"== {stage}: complete, exit 0" in log, log[-4000:]
    assert {p.name for p in out.iterdir()} == OUT_FILES  # what comes back: everything, and no more than 8 files
    throughput_ = json.loads((out / "throughput.json").read_text())
    names = [r["name"] for r in throughput_["results"]]
    assert names == [s.name for s in throughput.SETTINGS]  # eager first, then the compiled setting
    assert all("error" not in r for r in throughput_["results"]) and len(throughput_["envs"]) == 2  # two processes
    fast = json.loads((out / "tta_fast.json").read_text())
    assert set(fast["presets"]) == {"fast", "fast94"}
    assert all(len(p["seeds"]) == 2 and all(s["complete"] for s in p["seeds"]) for p in fast["presets"].values())
    model5 = json.loads((out / "tta_model5.json").read_text())
    assert [s["seed"] for s in model5["presets"]["model5"]["seeds"]] == [0]
    assert "channels_last=true" in model5["env"]["overrides"]  # the GPU-side default, the recipe otherwise unchanged
    weights = json.loads((out / "lite_r4b2.fast94.json").read_text())
    best = max(fast["presets"]["fast94"]["seeds"], key=lambda s: s["final_test_acc"])
    assert (weights["seed"], weights["test_acc"], weights["tta"]) == (best["seed"], best["final_test_acc"], 2)
    summary = (out / "summary.md").read_text()
    assert "not run" not in summary and "## Throughput" in summary and "NOT complete" not in summary
    assert "| fast | >= model5 + 0.0 pts in <= 10 s | 2 |" in summary  # judged against model5's finished run
    assert "| fast94 | >= model5 + 2.5 pts in <= 40 s | 2 |" in summary
    assert "lite_r4b2.fast94.safetensors: fast94 seed" in summary


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_budget_too_small_for_every_stage_then_a_second_call(tmp_path):
    """BUDGET=60: throughput, fast and compile are skipped (model5's share is kept), model5 gets the rest and is
    stopped with a checkpoint if it has not finished; summary.md says so and does not judge the targets. A second
    call with --continue finishes model5, from that checkpoint."""
    clone, python = _bare_setup(tmp_path)
    out = tmp_path / "out1"
    rc, log = _dry_run(clone, python, tmp_path, out, BUDGET="60", DRY_MODEL5_EPOCHS="20")
    assert rc == 0, log[-4000:]
    assert "== done at" in log
    seconds = int(log.split("== done at ")[1].split()[0])
    assert seconds <= 60, log[-3000:]
    summary = (out / "summary.md").read_text()
    for stage in ("throughput", "fast", "compile"):
        assert f"| {stage} | skipped |" in summary and f"- {stage}: NOT complete" in summary
    first = out / "tta_model5.json"  # absent when a slow setup left model5 too little time to start
    first_complete = first.exists() and json.loads(first.read_text())["presets"]["model5"]["seeds"][0]["complete"]
    if first_complete:  # a fast machine: all 20 tiny epochs fitted
        assert "| model5 | complete |" in summary
    else:
        assert "| model5 | cut: " in summary or "| model5 | skipped |" in summary
        assert "- model5: NOT complete" in summary
        assert "not judged: model5" in summary  # never against an unfinished model5
        assert "--continue --stage model5" in summary
    checkpoint = any((tmp_path / "scratch" / "tta_model5" / "model5-seed0" / "checkpoints").glob("step-*.pt"))

    out2 = tmp_path / "out2"
    rc, log = _dry_run(clone, python, tmp_path, out2, "--continue", "--stage", "model5", DRY_MODEL5_EPOCHS="20")
    assert rc == 0, log[-4000:]
    model5 = json.loads((out2 / "tta_model5.json").read_text())["presets"]["model5"]["seeds"][0]
    assert model5["complete"] and model5["epochs_done"] == 20
    if first_complete:
        assert "== model5: complete already" in log
    else:  # continued from the first call's checkpoint, when it got as far as saving one
        assert model5["resumed"] == checkpoint
    summary = (out2 / "summary.md").read_text()
    assert "- model5: complete" in summary and "## Targets\n\nmodel5 (seed 0, all 20 epochs" in summary
    assert "| fast | skipped |" in summary  # the first call's records stay


# ---------------------------------------------------------------------------------------------- failure paths


@pytest.fixture
def broken_backend():
    """A torch.compile backend that fails, as a compile that breaks on the GPU machine would."""
    def backend(gm, example_inputs):
        raise RuntimeError("planted compile failure")
    if "planted_broken" not in torch._dynamo.list_backends(exclude_tags=()):  # registered once per process
        torch._dynamo.register_backend(name="planted_broken")(backend)
    yield "planted_broken"
    torch._dynamo.reset()


@pytest.mark.slow
def test_throughput_times_the_eager_settings_first_and_records_a_failed_compile(tmp_path, broken_backend, monkeypatch):
    writes = []
    real_write = throughput.write_json
    monkeypatch.setattr(throughput, "write_json", lambda data, path: (writes.append(json.loads(json.dumps(data))),
                                                                        real_write(data, path)))
    path = tmp_path / "t.json"
    throughput.main(["--quick", "--variants", "lite_r4b2", "--compile-backend", broken_backend, "--json", str(path)])
    eager = [s.name for s in throughput.SETTINGS if not s.compile]
    assert [r["name"] for r in writes[0]["results"]] == eager[:1]  # written after the first setting's first round
    before = [w for w in writes if all(r["name"] in eager for r in w["results"])]
    assert len(before) >= 3 * len(eager)  # every round of every eager setting written before any compile starts
    assert [r["name"] for r in before[-1]["results"]] == eager
    data = json.loads(path.read_text())
    failed = [r for r in data["results"] if "error" in r]
    assert [r["name"] for r in failed] == ["bf16 + channels_last + compile"]
    assert "planted compile failure" in failed[0]["error"] and "failed:" in data["table"]
    assert all(r["rounds"] == 3 for r in data["results"] if "error" not in r)


SMALL = ["data.synthetic_train=256", "data.synthetic_test=64", "data.image_size=8", "batch_size=64", "epochs=1"]


@pytest.mark.slow
def test_a_failed_compile_is_retried_once_without_it(tmp_path, broken_backend):
    path = tmp_path / "t.json"
    time_to_accuracy.main(["--quick", "--seeds", "2", "--no-warmup", "--json", str(path), "--out", str(tmp_path / "r"),
                           *SMALL, "compile=true", f"compile_backend={broken_backend}"])
    seeds = json.loads(path.read_text())["presets"]["fast"]["seeds"]
    assert [s["complete"] for s in seeds] == [True, True]
    assert seeds[0]["retried_without_compile"] and "planted compile failure" in seeds[0]["compile_error"]
    assert not seeds[1]["retried_without_compile"] and seeds[1]["compile_error"].startswith("compile off")
    assert not seeds[0]["compile"] and not seeds[1]["compile"]


def test_a_non_finite_loss_ends_its_run_not_the_benchmark(tmp_path):
    path = tmp_path / "t.json"
    time_to_accuracy.main(["--quick", "--seeds", "2", "--no-warmup", "--json", str(path), "--out", str(tmp_path / "r"),
                           *SMALL, "optim.lr=1e30"])
    data = json.loads(path.read_text())
    seeds = data["presets"]["fast"]["seeds"]
    assert [s["seed"] for s in seeds] == [0, 1]
    assert all(s["error"].startswith("NonFiniteLoss") and not s["complete"] for s in seeds)
    assert not any(s["retried_without_compile"] for s in seeds)  # compile was off: nothing to retry
    assert "error: NonFiniteLoss" in data["table"]


@pytest.mark.slow
def test_a_failed_training_process_still_leaves_its_results_and_log(tmp_path, capsys):
    path = tmp_path / "t.json"
    time_to_accuracy.main(["--quick", "--seeds", "1", "--runner", "subprocess", "--json", str(path),
                           "--out", str(tmp_path / "r"), *SMALL, "optim.lr=1e30"])
    seed = json.loads(path.read_text())["presets"]["fast"]["seeds"][0]
    assert seed["returncode"] == 3 and "non-finite loss" in seed["error"] and not seed["complete"]
    out = capsys.readouterr().out
    assert "its last 40 lines" in out and "error: " in out.split("its last 40 lines")[1]


def test_skip_done_runs_only_the_seeds_an_earlier_call_did_not_finish(tmp_path):
    path, runs = tmp_path / "t.json", str(tmp_path / "r")
    time_to_accuracy.main(["--quick", "--seeds", "1", "--no-warmup", "--json", str(path), "--out", runs, *SMALL])
    first = json.loads(path.read_text())["presets"]["fast"]["seeds"][0]
    time_to_accuracy.main(["--quick", "--seeds", "2", "--no-warmup", "--json", str(path), "--out", runs, "--skip-done",
                           *SMALL])
    seeds = json.loads(path.read_text())["presets"]["fast"]["seeds"]
    assert [s["seed"] for s in seeds] == [0, 1] and seeds[0]["wall_seconds"] == first["wall_seconds"]


@pytest.mark.slow
def test_a_sigterm_stops_the_benchmark_with_its_results_written(tmp_path):
    """What gpu_run.sh's `timeout` does to a stage: the run in progress saves and stops, no further run starts, and
    the JSON says how far it got."""
    import os
    import signal
    import time

    path, runs = tmp_path / "t.json", tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "time_to_accuracy.py"), "--quick",
                             "--seeds", "2", "--no-warmup", "--json", str(path), "--out", str(runs), *SMALL,
                             "epochs=200"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    metrics = runs / "fast-seed0" / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.5)  # a finished epoch: the run is training
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    seeds = json.loads(path.read_text())["presets"]["fast"]["seeds"]
    assert [s["seed"] for s in seeds] == [0]  # seed 1 never started
    assert seeds[0]["stopped"] and not seeds[0]["complete"] and 1 <= seeds[0]["epochs_done"] < 200
    assert "no further runs" in out
