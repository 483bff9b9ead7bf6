"""Files from others are data, never code (issue 22): a CIFAR copy, weights, a weights file's metadata, images.

Each test writes a real crafted file that acts on the machine when read naively (its pickle creates a file, its header
asks for a 90-megapixel decode, its metadata for a 10**9-class classifier or another model folder) and checks that
reading it is a one-line error naming the file, and that nothing happened; the honest files of each kind still load.
"""
import pickle
import subprocess
import sys

import pytest

from resnet_lite.data.sources import load_dataset
from resnet_lite.errors import UserError
from resnet_lite.export import export_timm
from resnet_lite.models.lite import create_model
from resnet_lite.outputs.runs import load_run
from resnet_lite.outputs.weights import save_weights
from resnet_lite.predict import predict

from support.crafted import payloads, png_of
from support.formats import write_cifar_py


def test_a_cifar_batch_that_runs_a_command_is_refused_by_train(tmp_path):
    fake = write_cifar_py(tmp_path / "data")
    marker, batch = tmp_path / "ran", fake.folder / "data_batch_1"
    payload, asked = payloads(marker)["os.system"]
    batch.write_bytes(pickle.dumps(payload, protocol=2))
    proc = subprocess.run([sys.executable, "-m", "resnet_lite.train", "--data", "cifar10", "--data-dir",
                           str(tmp_path / "data"), "--wandb", "disabled"], cwd=tmp_path, capture_output=True, text=True)
    assert not marker.exists()
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: {batch} is not a plain CIFAR batch: it asks to load {asked}; delete {fake.folder} and download "
        f"CIFAR again"), proc.stderr


BOMB = (10_000, 9_000)  # 90 MP: over PIL's MAX_IMAGE_PIXELS (89.5 MP), under twice it, where PIL would only warn


def test_an_image_over_pils_pixel_limit_in_an_imagefolder_or_for_predict_is_a_one_line_error(tmp_path):
    root = tmp_path / "images"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            (root / split / cls / "0.png").write_bytes(png_of(8, 8))
    bomb = root / "train" / "b" / "1.png"
    bomb.write_bytes(png_of(*BOMB))
    with pytest.raises(UserError) as error:
        load_dataset(f"imagefolder:{root}", root=str(tmp_path / "cache"), image_size=8)
    message = str(error.value)
    assert message.startswith(f"{bomb} cannot be read as an image (Image size (90000000 pixels) exceeds limit")
    assert "\n" not in message

    weights = tmp_path / "w.safetensors"
    save_weights(create_model("lite_r4b2").state_dict(), weights, dict(
        model="lite_r4b2", num_classes=10, in_chans=3, image_size=8, classes=[str(i) for i in range(10)],
        mean=[0.5] * 3, std=[0.25] * 3))
    results, problems = predict(load_run(weights), [root / "train" / "a" / "0.png", bomb])
    assert [r["file"] for r in results] == [str(root / "train" / "a" / "0.png")]
    assert [(file, reason.split(" (")[0]) for file, reason in problems] == [(str(bomb), "cannot be read as an image")]
    assert "exceeds limit" in problems[0][1]


# -------------------------------------------------------------------------------------------- a weights file's metadata


GOOD_META = dict(model="lite_r4b2", num_classes=10, in_chans=3, image_size=32, classes=[str(i) for i in range(10)],
                 mean=[0.5] * 3, std=[0.25] * 3)


@pytest.fixture(scope="module")
def lite_weights():
    return create_model("lite_r4b2").state_dict()


def test_a_weights_file_with_sane_metadata_loads(tmp_path, lite_weights):
    save_weights(lite_weights, tmp_path / "w.safetensors", GOOD_META)
    assert load_run(tmp_path / "w.safetensors").model.num_classes == 10


@pytest.mark.parametrize("key, value", [
    ("num_classes", 10**9), ("num_classes", 0), ("num_classes", "ten"), ("in_chans", 10**6), ("in_chans", 0),
    ("image_size", 10**6), ("image_size", -1), ("image_size", 32.5),
])
def test_a_weights_file_asking_for_absurd_sizes_is_refused(tmp_path, lite_weights, key, value):
    path = tmp_path / "w.safetensors"
    save_weights(lite_weights, path, {**GOOD_META, key: value})
    with pytest.raises(UserError) as error:
        load_run(path)
    assert str(error.value).startswith(f"{path} has {key} {value!r} in its metadata, outside 1..")
    assert "\n" not in str(error.value)


def test_a_timm_folder_asking_for_an_absurd_crop_is_refused(tmp_path):
    export = tmp_path / "export"
    save_weights(create_model("lite_r4b2").state_dict(), tmp_path / "w.safetensors", GOOD_META)
    export_timm(load_run(tmp_path / "w.safetensors"), export)
    config = (export / "config.json").read_text()
    assert '"crop_pct": 1.0' in config
    (export / "config.json").write_text(config.replace('"crop_pct": 1.0', '"crop_pct": 1e-06'))
    with pytest.raises(UserError, match=r"has crop_pct 1e-06 in its metadata, outside 0.5..1.0"):
        load_run(export)


@pytest.mark.parametrize("model", ["hf-hub:timm/resnet18.a1_in1k", "local-dir:{export}", "not_a_model"])
def test_a_weights_file_naming_a_model_elsewhere_is_refused(tmp_path, lite_weights, model):
    """local-dir: would read another folder's config.json (here a real export), hf-hub: would download one."""
    export = tmp_path / "export"
    save_weights(lite_weights, tmp_path / "good.safetensors", GOOD_META)
    export_timm(load_run(tmp_path / "good.safetensors"), export)
    model = model.format(export=export)
    path = tmp_path / "w.safetensors"
    save_weights(lite_weights, path, {**GOOD_META, "model": model})
    with pytest.raises(UserError) as error:
        load_run(path)
    assert str(error.value).startswith(f"{path} names the model {model!r}, which is not a registered model")
    assert "\n" not in str(error.value)
