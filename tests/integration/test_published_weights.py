"""Published weights (issue 21): what a GPU run brings back becomes package data that
`create_model("lite_r4b2", pretrained=True)` loads offline, and `evaluate` reproduces the accuracy they record.

The mechanism is proven end to end on weights a tiny real training run makes here (never a committed file): the fast
stage's benchmark trains, gpu_summary.py exports its best fast94 seed as gpu_run.sh does, publish_weights.py installs
it into a fresh copy of the checkout, and a separate Python there loads and evaluates it, and builds the wheel.
While nothing is published, pretrained=True stays a one-line error; once something is, its accuracy is checked on the
shared archive.
"""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from resnet_lite.evaluate import evaluate
from resnet_lite.models.lite import published_weights

from support import REPO, fresh_copy
from support.formats import CIFAR10_CLASSES, write_imagefolder

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_summary  # noqa: E402
import publish_weights  # noqa: E402
import time_to_accuracy  # noqa: E402

PROBE = """
import json, sys, torch
from resnet_lite.outputs.weights import load_weights
from resnet_lite.evaluate import evaluate
from resnet_lite.models import create_model, published_weights
from resnet_lite.models.pretrained import initial_model
model = create_model("lite_r4b2", pretrained=True)
(name, entry), = published_weights("lite_r4b2").items()
state, _ = load_weights(entry["path"])
same = all(torch.equal(state[k], v) for k, v in model.state_dict().items())
five = create_model("lite_r4b2", pretrained=True, num_classes=5)
_, origin = initial_model("lite_r4b2", 10, pretrained=True)
report = evaluate(entry["path"], data=sys.argv[1], tta=entry["tta"], mixed_precision="no", data_dir=sys.argv[2],
                  output=sys.argv[3])
cfg = model.pretrained_cfg
print(json.dumps(dict(name=name, entry=entry, same=same, five=five.fc.out_features, origin=origin, acc=report["acc"],
                      samples=report["samples"], tag=cfg["tag"], hf_hub_id=cfg["hf_hub_id"], file=cfg["file"],
                      notes=list(cfg["notes"]), mean=list(cfg["mean"]))))
"""


def _probe(clone: Path, *args) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(clone), "HOME": str(clone.parent), "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=clone.parent, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_weights_a_run_brings_back_are_published_and_load_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    data = tmp_path / "c10" / "cifar10-jpeg"
    write_imagefolder(data, classes=CIFAR10_CLASSES, counts={"train": 12, "test": 6}, size=(32, 32), formats=("jpg",))
    spec, cache, runs, results = f"imagefolder:{data}", str(tmp_path / "cache"), tmp_path / "runs", tmp_path / "results"
    results.mkdir()
    # the fast stage of gpu_run.sh, tiny: one fast94 seed, then its export
    time_to_accuracy.main(["--preset", "fast94", "--seeds", "1", "--no-warmup", "--data", spec, "--data-dir", cache,
                           "--out", str(runs), "--json", str(results / "tta_fast.json"), "epochs=1", "batch_size=32",
                           "eval_batch_size=30", "compile=false"])
    print(gpu_summary.export_weights(results, runs, "0123abc", "c10.tar.gz", "f" * 64))
    meta = json.loads((results / gpu_summary.WEIGHTS_META).read_text())
    assert meta["preset"] == "fast94" and meta["tta"] == 2 and meta["test_images"] == 60

    clone = fresh_copy(tmp_path / "clone")
    dest = clone / "resnet_lite" / "models" / "weights"
    assert not (dest / "published.json").exists()
    publish_weights.main([str(results / gpu_summary.WEIGHTS), "--data", spec, "--data-dir", cache, "--dest", str(dest)])
    assert {p.name for p in dest.iterdir()} >= {"published.json", "lite_r4b2.fast94_c10jpeg.safetensors"}

    proc = _probe(clone, spec, cache, str(tmp_path / "eval"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    entry = got["entry"]
    assert got["name"] == "lite_r4b2.fast94_c10jpeg" and got["tag"] == "fast94_c10jpeg"
    assert got["same"]  # the package's file, loaded by timm through pretrained=True, offline
    assert got["file"] == str(dest / "lite_r4b2.fast94_c10jpeg.safetensors")
    assert got["hf_hub_id"] == "resnet-lite/lite_r4b2.fast94_c10jpeg"
    assert got["five"] == 5  # another number of classes: timm keeps the body, a new classifier
    assert got["origin"]["source"] == got["file"] and got["origin"]["sha256"] == entry["sha256"]
    assert got["mean"] == entry["mean"]  # the data's own normalisation, from the file
    assert any("commit: 0123abc" in n for n in got["notes"]) and any("fast94" in n for n in got["notes"])
    # evaluate reproduces what publishing measured here, and that is the recorded accuracy
    assert got["samples"] == entry["test_images"] == 60
    assert got["acc"] == entry["test_acc_cpu_fp32"]
    assert abs(got["acc"] - entry["test_acc"]) <= 0.005

    # package data of the wheel (setuptools 70.1+ builds wheels without the wheel package)
    if subprocess.run([sys.executable, "-c", "import setuptools"], capture_output=True).returncode == 0:
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                                str(tmp_path / "dist"), str(clone)], capture_output=True, text=True, timeout=600)
        assert built.returncode == 0, built.stderr[-3000:]
        (wheel,) = (tmp_path / "dist").glob("resnet_lite-*.whl")
        names = zipfile.ZipFile(wheel).namelist()
        assert "resnet_lite/models/weights/published.json" in names
        assert "resnet_lite/models/weights/lite_r4b2.fast94_c10jpeg.safetensors" in names

    # a registry entry whose file is gone: one line, not timm's traceback
    (dest / "lite_r4b2.fast94_c10jpeg.safetensors").unlink()
    proc = _probe(clone, spec, cache, str(tmp_path / "eval"))
    assert proc.returncode != 0
    assert "UserError: the published weights of lite_r4b2 (fast94_c10jpeg) should be at" in proc.stderr


def test_a_publication_that_misses_its_recorded_accuracy_is_refused(tmp_path, monkeypatch):
    weights, meta = tmp_path / "w.safetensors", tmp_path / "w.json"
    weights.write_bytes(b"")
    meta.write_text(json.dumps({"model": "lite_r4b2", "preset": "fast94", "test_acc": 0.9, "test_images": 60,
                                "tta": 2}))
    monkeypatch.setattr(publish_weights, "evaluate_here", lambda *a, **k: {"acc": 0.8, "samples": 60})
    with pytest.raises(SystemExit, match="10.00 points from the recorded accuracy"):
        publish_weights.main([str(weights), "--data", "imagefolder:x", "--dest", str(tmp_path / "dest")])
    assert not (tmp_path / "dest").exists()


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 10,000 test images with TTA on a CPU: minutes
@pytest.mark.parametrize("name", sorted(published_weights()) or [pytest.param("none", marks=pytest.mark.skip(
    reason="no weights are published yet (benchmarks/publish_weights.py)"))])
def test_the_published_weights_reproduce_their_accuracy(name, cifar10_jpeg_tree, tmp_path):
    entry = published_weights()[name]
    report = evaluate(entry["path"], data=f"imagefolder:{cifar10_jpeg_tree}", tta=entry["tta"], mixed_precision="no",
                      data_dir=str(tmp_path / "cache"), output=str(tmp_path / "eval"))
    assert report["samples"] == entry["test_images"]
    assert abs(report["acc"] - entry["test_acc_cpu_fp32"]) <= 0.001  # this CPU's fp32 against the publisher's
    assert abs(report["acc"] - entry["test_acc"]) <= 0.005  # and against the GPU run's own measurement
