"""Files from others are data, never code (issue 22): a CIFAR copy, weights, a weights file's metadata, images.

Each test writes a real crafted file that acts on the machine when read naively (its pickle creates a file, its header
asks for a 90-megapixel decode, its metadata for a 10**9-class classifier or another model folder) and checks that
reading it is a one-line error naming the file, and that nothing happened; the honest files of each kind still load.
"""
import argparse
import builtins
import os
import pickle
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from formats import write_cifar_py
from PIL import Image
from safetensors.torch import save_file
from test_models import SEED_ARCH, SeedNet

from resnet_lite.data.images import decode
from resnet_lite.data.sources import load_dataset
from resnet_lite.errors import UserError
from resnet_lite.export import export_timm
from resnet_lite.models.lite import create_model
from resnet_lite.models.pretrained import initial_model
from resnet_lite.outputs.runs import load_run
from resnet_lite.outputs.weights import read_state_dict, save_weights
from resnet_lite.predict import predict


class Payload:
    """Pickles as a call of `fn(*args)`: what unpickling it runs."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payloads(marker):
    """name -> (payload, the global its protocol-2 pickle names): each creates `marker` when plain pickle reads it."""
    return {"os.system": (Payload(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
            "open": (Payload(builtins.open, str(marker), "w"), "io.open"),
            "exec": (Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"), "__builtin__.exec")}


def python2_pickle(obj) -> bytes:
    """`obj` (dicts, lists, str, int, uint8 arrays) as Python 2's cPickle wrote the official -py files: protocol 2,
    byte strings, arrays through numpy.core.multiarray._reconstruct with their bytes as a string."""
    def put(x) -> bytes:
        if isinstance(x, dict):
            return b"}(" + b"".join(put(k) + put(v) for k, v in x.items()) + b"u"
        if isinstance(x, list):
            return b"](" + b"".join(map(put, x)) + b"e"
        if isinstance(x, str):
            raw = x.encode("latin1")
            return b"T" + struct.pack("<i", len(raw)) + raw  # BINSTRING: a Python 2 str
        if isinstance(x, (int, np.integer)):
            return b"J" + struct.pack("<i", int(x))
        assert isinstance(x, np.ndarray) and x.dtype == np.uint8
        dtype = (b"cnumpy\ndtype\n" + put("u1") + put(0) + put(1) + b"\x87R("
                 + put(3) + put("|") + b"NNN" + put(-1) + put(-1) + put(0) + b"tb")
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + put(0) + b"\x85" + put("b") + b"\x87R("
                + put(1) + b"(" + b"".join(put(n) for n in x.shape) + b"t" + dtype + b"\x89"
                + put(x.tobytes().decode("latin1")) + b"tb")

    return b"\x80\x02" + put(obj) + b"."


# ---------------------------------------------------------------------------------------------- CIFAR, python layout


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


@pytest.mark.parametrize("kind", ["os.system", "open", "exec"])
@pytest.mark.parametrize("name, victim", [("cifar10", "test_batch"), ("cifar10", "batches.meta"), ("cifar100", "train")])
def test_a_cifar_pickle_that_would_create_a_file_is_refused(tmp_path, kind, name, victim):
    fake = write_cifar_py(tmp_path, name)
    marker, path = tmp_path / "ran", fake.folder / victim
    payload, asked = payloads(marker)[kind]
    entry = pickle.loads(path.read_bytes())
    entry["note"] = payload  # otherwise a good batch: it would load, and train
    path.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(UserError) as error:
        load_dataset(name, root=str(tmp_path))
    assert not marker.exists()
    assert str(error.value) == f"{path} is not a plain CIFAR batch: it asks to load {asked}; delete {fake.folder} and " \
                               f"download CIFAR again"


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_python_batches_as_the_official_archive_pickles_them_still_load(tmp_path, name):
    """Python 2 byte strings and numpy.core's _reconstruct, as in the official files; the fixture's own protocol-2
    pickles (written by Python 3 and numpy 2: _codecs.encode, numpy._core) load in test_data.py."""
    fake = write_cifar_py(tmp_path, name)
    for path in fake.folder.iterdir():
        path.write_bytes(python2_pickle(pickle.loads(path.read_bytes())))
    assert b"numpy.core.multiarray" in (fake.folder / ("test" if name == "cifar100" else "test_batch")).read_bytes()
    with pytest.warns(UserWarning, match="differ from the official CIFAR checksums"):
        ds = load_dataset(name, root=str(tmp_path))
    assert ds.classes == fake.classes
    assert torch.equal(ds.train.images, torch.from_numpy(fake.train_images))
    assert torch.equal(ds.test.labels, torch.from_numpy(fake.test_labels))


# ---------------------------------------------------------------------------------------------- weights read by torch


def test_a_pth_that_would_create_a_file_is_refused(tmp_path):
    seed = SeedNet(*SEED_ARCH["lite_r4b2"]).state_dict()
    for kind, (payload, asked) in payloads(tmp_path / "ran").items():
        path = tmp_path / f"{kind}.pth"
        torch.save({"state_dict": seed, "note": payload}, path)
        for load in (dict(initial_checkpoint=path), dict(pretrained=True, pretrained_path=path)):
            with pytest.raises(UserError) as error:
                initial_model("lite_r4b2", 10, **load)
            function = asked.split(".")[-1]  # torch names a builtin without its module
            assert re.fullmatch(rf"{re.escape(str(path))} is not plain weights: it asks to load ([\w.]+\.)?{function}, "
                                rf"which could run code; give a \.safetensors or \.pth state_dict", str(error.value))
    assert not (tmp_path / "ran").exists()


def test_checkpoint_dicts_unwrap_as_timm_does(tmp_path):
    """timm's training checkpoint (args in an argparse.Namespace, the EMA preferred) and DDP/compile prefixes."""
    model = create_model("lite_r4b2")
    weights, ema = model.state_dict(), {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    wrapped = {f"_orig_mod.module.{k}": v for k, v in weights.items()}
    files = {
        "timm.pth.tar": ({"epoch": 3, "arch": "lite_r4b2", "state_dict": weights, "state_dict_ema": ema,
                          "args": argparse.Namespace(model="lite_r4b2", lr=0.1), "version": 2}, ema),
        "model_ema.pth": ({"model": weights, "model_ema": ema}, ema),
        "model.pth": ({"model": wrapped, "epoch": 1}, weights),
        "plain.pt": ({f"module.{k}": v for k, v in weights.items()}, weights),
    }
    for name, (checkpoint, expected) in files.items():
        torch.save(checkpoint, tmp_path / name)
        read = read_state_dict(tmp_path / name)
        assert read.keys() == expected.keys() and all(torch.equal(read[k], expected[k]) for k in expected), name
    save_file(wrapped, tmp_path / "w.safetensors")
    assert read_state_dict(tmp_path / "w.safetensors").keys() == weights.keys()


# ---------------------------------------------------------------------------------------------- images


def _png_of(width, height) -> bytes:
    """A real, valid 1-bit PNG of width x height black pixels: a few KB for any size (zlib of zero rows)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(bytes(1 + (width + 7) // 8) * height, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


BOMB = (10_000, 9_000)  # 90 MP: over PIL's MAX_IMAGE_PIXELS (89.5 MP), under twice it, where PIL would only warn


def test_an_image_over_pils_pixel_limit_is_refused_not_decoded(tmp_path):
    (tmp_path / "small.png").write_bytes(_png_of(6, 4))
    assert decode(tmp_path / "small.png").shape == (4, 6, 3)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_of(*BOMB))
    assert bomb.stat().st_size < 20_000
    with pytest.raises(Image.DecompressionBombError, match="90000000 pixels.*shrink the image or remove it"):
        decode(bomb, 8)


def test_an_image_over_pils_pixel_limit_in_an_imagefolder_or_for_predict_is_a_one_line_error(tmp_path):
    root = tmp_path / "images"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            (root / split / cls / "0.png").write_bytes(_png_of(8, 8))
    bomb = root / "train" / "b" / "1.png"
    bomb.write_bytes(_png_of(*BOMB))
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


# ---------------------------------------------------------------------------------------------- a weights file's metadata


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
