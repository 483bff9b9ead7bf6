"""predict: real PNG/JPEG/BMP/GIF files of several sizes, directories, a broken file; the probabilities are the
model's."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from resnet_lite.data.sources import DataConfig, load_data
from resnet_lite.outputs.runs import load_run
from resnet_lite.predict import main, predict, read_image

from support.tiny_run import TEST_IMAGES


@pytest.fixture(scope="module")
def test_split():
    return load_data(DataConfig("synthetic", synthetic_train=512, synthetic_test=TEST_IMAGES, image_size=8)).test


def _probs(run, images: torch.Tensor, tta: int = 1) -> torch.Tensor:
    """The tiny run measures with flip TTA (tta=1), so predict's default averages the logits of x and its mirror."""
    with torch.no_grad():
        x = run.normalize(images)
        logits = run.model(x) if tta == 0 else (run.model(x) + run.model(x.flip(3))) / 2
        return logits.softmax(1)


def test_png_files_of_test_images_get_the_models_probabilities(tiny_run, test_split, tmp_path):
    run = load_run(tiny_run)
    images = test_split.images[:12]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])  # lossless, already the model's 8x8
    for tta in (None, 0):  # the run's own TTA level (flip), then none
        results, problems = predict(run, [tmp_path], top_k=3, tta=tta)
        assert problems == [] and [r["file"] for r in results] == [str(p) for p in paths]
        values, indices = _probs(run, images, 1 if tta is None else tta).topk(3, dim=1)
        for r, v, ix in zip(results, values.tolist(), indices.tolist(), strict=True):
            assert [t["index"] for t in r["top"]] == ix and [t["label"] for t in r["top"]] == [f"class{i}" for i in ix]
            assert [t["probability"] for t in r["top"]] == pytest.approx(v, abs=1e-6)
    assert not torch.allclose(_probs(run, images, 0), _probs(run, images, 1), atol=1e-3)  # so the level was checked


def test_any_size_and_format_is_resized_and_cropped_like_timms_eval_transform(tiny_run, tmp_path):
    run = load_run(tiny_run)
    rng = np.random.default_rng(0)
    files = {"wide.jpg": (60, 100), "tall.png": (90, 30), "small.bmp": (5, 7), "anim.gif": (16, 16),
             "big.webp": (300, 400)}
    for name, (h, w) in files.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), mode="L").save(tmp_path / "grey.png")
    results, problems = predict(run, sorted(tmp_path.iterdir()), top_k=10)
    timm_eval = timm.data.create_transform(input_size=(3, 8, 8), crop_pct=1.0, interpolation="bilinear",
                                           normalize=False)  # a shorter-side resize and a centre crop, not a squash
    assert problems == [] and len(results) == len(files) + 1
    for r in results:
        with Image.open(r["file"]) as img:  # the independent reference: timm's eval transform at the run's size
            reference = timm_eval(img.convert("RGB"))
        assert torch.equal(read_image(r["file"], 8), reference)
        probs = _probs(run, reference[None])[0]
        assert [t["probability"] for t in r["top"]] == pytest.approx(probs.sort(descending=True).values.tolist(),
                                                                     abs=1e-6)
        assert sum(t["probability"] for t in r["top"]) == pytest.approx(1.0, abs=1e-5)  # top 10 of 10 classes


def test_directories_recursively_with_a_broken_file(tiny_run, tmp_path, capsys):
    (tmp_path / "photos" / "more").mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "photos" / "a.png")
    Image.new("RGB", (64, 48), (30, 200, 30)).save(tmp_path / "photos" / "more" / "b.JPG")
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    (tmp_path / "photos" / "notes.txt").write_text("not an image, and not an image's name: skipped")
    assert main([str(tiny_run), str(tmp_path / "photos"), str(tmp_path / "missing.png"), "--json", "--top-k", "2"]) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [Path(r["file"]).name for r in results] == ["a.png", "b.JPG"]
    assert all(len(r["top"]) == 2 and r["top"][0]["probability"] >= r["top"][1]["probability"] for r in results)
    warnings = captured.err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: ") for w in warnings)
    assert "broken.jpg cannot be read as an image" in captured.err and "missing.png does not exist" in captured.err


def test_table(tiny_run, tmp_path, capsys):
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "one.png")
    assert main([str(tiny_run), str(tmp_path / "one.png"), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "one.png" in out and "#3" in out and "#4" not in out and out.count("%") == 3


def test_nothing_readable_is_an_error_in_a_real_process(tiny_run, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "resnet_lite.predict", str(tiny_run), str(tmp_path / "broken.png"),
                           str(tmp_path / "empty")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[-1].startswith("error: no image could be predicted") and len(lines) == 3
    assert any("broken.png cannot be read" in line for line in lines)
    assert any("no image files" in line for line in lines)


@pytest.mark.parametrize("device", ["cuda", "cuda:7"])
def test_a_device_this_machine_lacks_is_a_one_line_error(tiny_run, tmp_path, device):
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "one.png")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU, whatever this machine has
    proc = subprocess.run([sys.executable, "-m", "resnet_lite.predict", str(tiny_run), str(tmp_path / "one.png"),
                           "--device", device], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"error: --device {device}: this machine has no CUDA GPU(s); use --device cpu"]
