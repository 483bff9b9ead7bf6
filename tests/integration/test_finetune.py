"""Fine-tuning, read as a specification: starting from real weight files (a run on other classes, a seed-notebook
state_dict, timm's pretrained mechanism with a local file, a timm folder), any timm model by name, a lower backbone lr,
a frozen backbone, layer-wise decay, and the one-line errors for weights that do not fit.

Runs are tiny (8x8 images, a few dozen of them, 1-2 epochs), so the file stays a few tens of seconds on two CPU cores.
"""
import json
import shutil
import subprocess
import sys

import pytest
import timm
import torch
from PIL import Image

from resnet_lite.config import resolve_config
from resnet_lite.data.sources import load_dataset
from resnet_lite.errors import UserError
from resnet_lite.export import export_timm
from resnet_lite.models.lite import create_model
from resnet_lite.models.pretrained import initial_model
from resnet_lite.outputs.checkpoint import list_checkpoints, load_checkpoint
from resnet_lite.outputs.rundir import claimed
from resnet_lite.outputs.runs import load_run
from resnet_lite.outputs.weights import load_weights
from resnet_lite.predict import read_image
from resnet_lite.train import main, train
from resnet_lite.training.distributed import accelerator_session
from resnet_lite.training.trainer import Trainer

from support.formats import write_imagefolder
from support.notebook import SEED_ARCH, SeedNet

FIVE = ("ant", "bee", "cow", "dog", "eel")
TINY = ["--wandb", "disabled", "--batch-size", "16", "eval_batch_size=32", "data.image_size=8"]
TEN = ["--data", "synthetic", "data.synthetic_train=64", "data.synthetic_test=20"]  # 10 classes


pytestmark = pytest.mark.usefixtures("no_wandb")


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    """(image folder of 5 classes, a finished one-epoch lite_r4b2 run on it): non-square 12x20 files, cropped to 8."""
    base = tmp_path_factory.mktemp("five")
    write_imagefolder(base / "images", classes=FIVE, counts={"train": 6, "test": 2}, size=(12, 20))
    main(["--data", f"imagefolder:{base / 'images'}", "--data-dir", str(base / "cache"), "--epochs", "1", *TINY,
          "--output-dir", str(base / "run")])
    return base / "images", base / "run"


def params(state_dict, model, head=False):
    """The parameters (not buffers) of `state_dict`, the classifier's only or all but the classifier's."""
    return {k: v for k, v in state_dict.items() if k in dict(model.named_parameters()) and k.startswith("fc.") == head}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- starting weights


@pytest.mark.slow  # three epochs of training
def test_a_five_class_run_fine_tuned_onto_ten_classes_frozen_then_resumed(five, tmp_path, capsys):
    images, source_run = five
    source, _ = load_weights(source_run / "model_last.safetensors")  # a run directory's weights: its model_last
    cfg = resolve_config(overrides=[*TEN[2:], "data.spec=synthetic", "data.image_size=8", "batch_size=16",
                                    "eval_batch_size=32", "epochs=2", "keep_checkpoints=3", "optim.freeze_epochs=1",
                                    f"initial_checkpoint={source_run}", f"output_dir={tmp_path / 'ft'}"])
    with accelerator_session() as accelerator, claimed(cfg.output_dir, "ft", accelerator) as run_dir:
        trainer = Trainer(cfg, accelerator, run_dir)
        start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        # step 0: the source's backbone exactly, a new 10-class classifier
        assert same(params(start, trainer.model), params(source, trainer.model))
        assert start["fc.weight"].shape == (10, 256) and source["fc.weight"].shape == (5, 256)
        trainer.fit()
    out = capsys.readouterr().out
    assert f"initial weights: {source_run / 'model_last.safetensors'}; classifier fc re-initialised for 10 classes " \
           f"(the weights have 5 classes)" in out
    ft = tmp_path / "ft"
    origin = json.loads((ft / "summary.json").read_text())["initial_weights"]
    assert origin["source"] == str(source_run / "model_last.safetensors") and origin["classifier_reset"]
    assert len(origin["sha256"]) == 64
    assert f"initial_checkpoint: {source_run / 'model_last.safetensors'}" in (ft / "config.yaml").read_text()

    epoch1, epoch2 = list_checkpoints(ft / "checkpoints")
    after1, after2 = load_checkpoint(epoch1)["model"], load_checkpoint(epoch2)["model"]
    model = trainer.model
    assert same(params(after1, model), params(start, model))  # the frozen epoch left the backbone bitwise alone
    assert not torch.equal(after1["fc.weight"], start["fc.weight"])  # while the classifier learnt
    moved = [k for k, v in params(after2, model).items() if not torch.equal(v, start[k])]
    assert len(moved) == len(params(start, model))  # after it, every backbone parameter moved

    # resume from the frozen epoch's checkpoint with the starting weights gone: restored, never reloaded
    shutil.copytree(ft, tmp_path / "again")
    shutil.move(source_run / "model_last.safetensors", tmp_path / "moved.safetensors")
    try:
        train(resolve_config(base=load_checkpoint(epoch1)["config"], overrides=[f"output_dir={tmp_path / 'again'}"]),
              resume=tmp_path / "again" / "checkpoints" / epoch1.name)
    finally:
        shutil.move(tmp_path / "moved.safetensors", source_run / "model_last.safetensors")
    assert same(load_weights(tmp_path / "again" / "model_last.safetensors")[0],
                load_weights(ft / "model_last.safetensors")[0])
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["initial_weights"] == origin


def test_pretrained_from_a_local_file_through_timms_overlay(five, tmp_path):
    images, source_run = five
    file = source_run / "model_last.safetensors"
    source, _ = load_weights(file)
    same_classes, origin = initial_model("lite_r4b2", 5, pretrained=True, pretrained_path=file)
    assert same(same_classes.state_dict(), source) and origin["note"] == "classifier loaded"
    assert same_classes.pretrained_cfg["file"] == str(file)  # timm's own mechanism loaded it
    other, origin = initial_model("lite_r4b2", 10, pretrained=True, pretrained_path=file)
    assert same(params(other.state_dict(), other), params(source, other)) and origin["classifier_reset"]
    # the whole run, from the command line: the origin is recorded
    main([*TEN, "--epochs", "1", *TINY, "--model", "lite_r4b2", "--pretrained-path", str(file),
          "--output-dir", str(tmp_path / "run"), "data.synthetic_train=16", "data.synthetic_test=8"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["initial_weights"]["source"] == str(file) and summary["initial_weights"]["classifier_reset"]
    assert "pretrained: true" in (tmp_path / "run" / "config.yaml").read_text()


def test_pretrained_from_a_timm_folder_local_dir(five, tmp_path):
    """timm's local-dir: source (as hf-hub: is, without the network): an exported run, onto other classes."""
    images, source_run = five
    export_timm(load_run(source_run), tmp_path / "export")
    model, origin = initial_model(f"local-dir:{tmp_path / 'export'}", 10, pretrained=True)
    source, _ = load_weights(source_run / "model_last.safetensors")
    assert same(params(model.state_dict(), model), params(source, model)) and model.num_classes == 10
    assert origin["classifier_reset"] and origin["source"] == f"local-dir:{tmp_path / 'export'}"


@pytest.mark.slow  # an 11M-parameter model's epoch and files
def test_any_timm_model_by_name_resnet18(five, tmp_path):
    images, _ = five
    run = tmp_path / "r18"
    main(["--model", "resnet18", "--data", f"imagefolder:{images}", "--data-dir", str(tmp_path / "cache"),
          "--epochs", "1", *TINY, "data.image_size=16", "--output-dir", str(run)])
    assert json.loads((run / "summary.json").read_text())["model"] == "resnet18"
    assert load_run(run).model.__class__.__name__ == "ResNet"
    # its weights as pretrained weights of resnet18 (timm's file overlay), onto 10 classes: timm adapts the head
    model, origin = initial_model("resnet18", 10, pretrained=True, pretrained_path=run / "model_last.safetensors")
    trained, _ = load_weights(run / "model_last.safetensors")
    assert same(params(model.state_dict(), model), params(trained, model)) and model.fc.out_features == 10


@pytest.mark.slow  # a real process: its stderr is all the user sees
def test_weights_that_do_not_fit_are_one_line_errors(tmp_path, capsys, monkeypatch):
    torch.save(SeedNet(*SEED_ARCH["lite_r5b2"]).state_dict(), tmp_path / "r5b2.pth")
    proc = subprocess.run([sys.executable, "-m", "resnet_lite.train", "--model", "lite_r4b2", "--initial-checkpoint",
                           "r5b2.pth", *TEN, "--wandb", "disabled"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == ("error: r5b2.pth does not fit lite_r4b2: layer4.0.conv1.weight is [128, 128, 3, 3] "
                                   "there, [256, 128, 3, 3] in the model; give weights of lite_r4b2")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--pretrained", *TEN, "--wandb", "disabled"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: no pretrained weights are published for lite_r4b2; give pretrained_path=")
    assert not (tmp_path / "runs").exists()  # nothing half-written

    (tmp_path / "notes.pth").write_text("not weights")
    torch.save({"conv1.weight": torch.zeros(32, 3, 5, 5)}, tmp_path / "part.pth")
    cases = {"notes.pth": "cannot read weights from", "missing.pth": "do not exist",
             "part.pth": "does not fit lite_r4b2: it has no bn1.weight", str(tmp_path): "has no model_last.safetensors"}
    for path, message in cases.items():
        with pytest.raises(UserError, match=message):
            initial_model("lite_r4b2", 10, initial_checkpoint=tmp_path / path)
    with pytest.raises(UserError, match="pretrained_path=x.pth is read only with pretrained=true"):
        resolve_config(overrides=["pretrained_path=x.pth"])


# ---------------------------------------------------------------------------------------------- the optimizer


def test_training_and_predict_decode_like_timms_eval_transform(five, tmp_path):
    """The independent reference: timm's resolve_data_config + create_transform (no normalisation) on the file."""
    model = create_model("lite_r4b2")
    config = timm.data.resolve_data_config({}, model=model)
    reference = timm.data.create_transform(**config, is_training=False, normalize=False)
    for i, (h, w) in enumerate([(50, 30), (30, 71), (32, 32), (20, 25), (12, 20)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(torch.randint(0, 256, (h, w, 3), dtype=torch.uint8).numpy()).save(path)
        with Image.open(path) as img:
            expected = reference(img.convert("RGB"))
        assert torch.equal(read_image(path, 32), expected), (h, w)
    # the training set holds exactly what decode gives for its size: the same pixels predict feeds the model
    images, source_run = five
    first = sorted((images / "train" / FIVE[0]).iterdir())[0]
    train_split = load_dataset(f"imagefolder:{images}", root=str(tmp_path / "cache"), image_size=8).train
    assert torch.equal(train_split.images[0], read_image(first, load_run(source_run).image_size))
