"""evaluate: the trainer's own measurement reproduced from the files a run leaves, TTA, other data, several processes,
and one-line errors for the wrong input. Every test uses a real run trained once per session (tiny_run.py)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from resnet_lite.data.sources import DataConfig, load_data
from resnet_lite.errors import UserError
from resnet_lite.evaluate import evaluate, main
from resnet_lite.outputs.runs import load_run

from support import REPO
from support.formats import write_imagefolder
from support.tiny_run import TEST_IMAGES

BIN = Path(sys.executable).parent


def _summary(run):
    return json.loads((run / "summary.json").read_text())


def test_reproduces_the_runs_final_accuracy_and_writes_its_files(tiny_run):
    report = evaluate(tiny_run)  # everything from the run: last weights, data, TTA level, eval batch size, precision
    summary = _summary(tiny_run)
    assert report["tta"] == summary["tta"] == 1
    assert report["acc"] == summary["final_test_acc"] and report["run_final_test_acc"] == summary["final_test_acc"]
    assert report["samples"] == summary["eval_samples"] == TEST_IMAGES
    assert report["per_class_acc"] == summary["per_class_acc"]
    assert report["loss"] == pytest.approx(summary["final_test_loss"], rel=1e-6)
    assert 0.15 < report["acc"] < 1.0  # the run learnt something, and not everything: the checks above can fail

    assert report["files"] == [str(tiny_run / "evaluation-last-test-tta1.json"),
                               str(tiny_run / "confusion-last-test-tta1.png")]
    saved = json.loads((tiny_run / "evaluation-last-test-tta1.json").read_text())
    assert saved["acc"] == report["acc"] and saved["confusion"] == report["confusion"]
    confusion = torch.tensor(saved["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == TEST_IMAGES
    assert confusion.diag().sum().item() == round(report["acc"] * TEST_IMAGES)
    with Image.open(tiny_run / "confusion-last-test-tta1.png") as png:
        assert png.format == "PNG" and png.size[0] > 400


def test_tta_levels_are_the_hand_computed_ones(tiny_run, tmp_path):
    run = load_run(tiny_run, "best")
    test = load_data(DataConfig("synthetic", synthetic_train=512, synthetic_test=TEST_IMAGES, image_size=8)).test
    with torch.no_grad():
        x = run.normalize(test.images)
        plain = run.model(x).argmax(1)
        flip = ((run.model(x) + run.model(x.flip(3))) / 2).argmax(1)
    assert not torch.equal(plain, flip)  # the mirror image changes some predictions: the level matters
    for level, pred in ((0, plain), (1, flip)):
        report = evaluate(tiny_run, weights="best", tta=level, output=tmp_path)
        assert report["acc"] == (pred == test.labels).double().mean().item() and report["tta"] == level
        assert report["weights"].endswith("model_best.safetensors")
        assert "run_final_test_acc" not in report  # best weights measure something else than the summary's final
    assert evaluate(tiny_run, tta=2, output=tmp_path)["tta"] == 2
    # not the run's level
    assert "run_final_test_acc" not in json.loads((tmp_path / "evaluation-last-test-tta2.json").read_text())
    # each setting has its own files: evaluating again with other settings kept the earlier results
    written = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("evaluation-*.json")}
    assert {name: (r["weights"].rsplit("_", 1)[1], r["tta"]) for name, r in written.items()} == {
        "evaluation-best-test-tta0.json": ("best.safetensors", 0),
        "evaluation-best-test-tta1.json": ("best.safetensors", 1),
        "evaluation-last-test-tta2.json": ("last.safetensors", 2)}
    assert {p.name for p in tmp_path.glob("confusion-*.png")} == {
        n.replace("evaluation", "confusion").replace(".json", ".png") for n in written}


def test_cli_prints_tables(tiny_run, tmp_path, capsys):
    assert main([str(tiny_run), "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    acc = _summary(tiny_run)["final_test_acc"]
    assert f"{100 * acc:.2f}% (the same)" in out
    assert "flip" in out and "per class" in out and "confusion matrix" in out
    assert all(f"class{i}" in out for i in range(10))
    assert json.loads((tmp_path / "evaluation-last-test-tta1.json").read_text())["acc"] == acc
    assert f"saved {tmp_path / 'evaluation-last-test-tta1.json'} and" in " ".join(out.split())


@pytest.mark.parametrize("args, message", [
    (["--tta", "runs/x"], "argument --tta: a level is required, not 'runs/x': write `--tta 1 runs/x`"),
    (["runs/x", "--tta", "3"], "argument --tta: 3 is not a TTA level: 0 none, 1 flip, 2 flip + 1-pixel translate"),
    (["runs/x", "--tta"], "argument --tta: expected one argument"),
])
def test_tta_needs_an_explicit_level_and_never_takes_the_run(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1


def test_weights_file_alone_needs_data_of_the_models_size(tiny_run, tmp_path):
    weights = shutil.copy(tiny_run / "model_last.safetensors", tmp_path / "m.safetensors")  # no config.yaml beside it
    with pytest.raises(UserError, match="give --data"):
        evaluate(weights)
    images = tmp_path / "images"  # real PNG/JPEG files of the model's classes, twice the model's size
    write_imagefolder(images, classes=[f"class{i}" for i in range(10)], counts={"train": 1, "test": 3}, size=(16, 16))
    spec, cache = f"imagefolder:{images}", str(tmp_path / "cache")
    with pytest.raises(UserError, match="add --image-size 8"):
        evaluate(weights, data=spec, data_dir=cache)
    report = evaluate(weights, data=spec, data_dir=cache, image_size=8)
    assert report["tta"] == 0 and report["samples"] == 30 and sum(map(sum, report["confusion"])) == 30
    name = Path(report["files"][0]).name
    assert re.fullmatch(r"evaluation-m-test-tta0-imagefolder_images-[0-9a-f]{8}\.json", name), name
    assert "run_final_test_acc" not in report
    assert Path(report["files"][0]).is_file() and Path(report["files"][1]).is_file()
    # the same settings rewrite the same files; another folder of the same name, or another batch size, get their own
    assert evaluate(weights, data=spec, data_dir=cache, image_size=8)["files"] == report["files"]
    other = tmp_path / "elsewhere" / "images"
    write_imagefolder(other, classes=[f"class{i}" for i in range(10)], counts={"train": 1, "test": 2}, size=(8, 8))
    files = {Path(evaluate(weights, data=f"imagefolder:{other}", data_dir=cache)["files"][0]).name,
             Path(evaluate(weights, data=spec, data_dir=cache, image_size=8, batch_size=7)["files"][0]).name}
    assert len(files | {name}) == 3 and all(n.startswith("evaluation-m-test-tta0-imagefolder_images-") for n in files)
    assert json.loads((tmp_path / name).read_text())["samples"] == 30  # the first result is still there


def test_data_with_other_classes_is_refused(tiny_run, tmp_path, capsys):
    write_imagefolder(tmp_path / "images", size=(8, 8))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tiny_run), "--data", f"imagefolder:{tmp_path / 'images'}", "--data-dir", str(tmp_path / "cache"),
              "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "classes [cat, dog, frog] (3)" in err and "trained on [class0" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: (d / "c.pt").write_bytes(b"x") and d / "c.pt", "training checkpoint: give its run directory"),
    (lambda d: (d / "w.safetensors").write_bytes(b"not safetensors") and d / "w.safetensors", "cannot read"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "has no model_last.safetensors"),
])
def test_bad_input_is_one_line(tmp_path, capsys, make, message):
    with pytest.raises(SystemExit) as exit_info:
        main([str(make(tmp_path))])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_unfinished_run_points_to_its_best_weights(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    (run / "model_last.safetensors").unlink()  # as while the run is still training
    with pytest.raises(UserError, match="use --weights best"):
        evaluate(run)
    assert evaluate(run, weights="best", output=tmp_path)["samples"] == TEST_IMAGES


@pytest.mark.slow
def test_accelerate_launch_two_processes_count_every_image_once(tiny_run, tmp_path):
    """Two gloo processes on the CPU (launch/cpu.yaml): shards of 50 and 51 images, sums reduced, one report."""
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(REPO / "launch" / "cpu.yaml"),
           "-m", "resnet_lite.evaluate", str(tiny_run), "--output", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("per class") == 1  # the main process alone prints
    two = json.loads((tmp_path / "evaluation-last-test-tta1.json").read_text())
    one = evaluate(tiny_run, output=tmp_path / "one")
    assert two["world_size"] == 2 and two["samples"] == TEST_IMAGES
    assert two["confusion"] == one["confusion"] and two["loss"] == pytest.approx(one["loss"], rel=1e-5)
