"""Files from others are data, never code: the in-process checks (nothing trained, no process started). The rest, and
what the file tests and why: tests/integration/test_untrusted.py."""
import argparse
import pickle
import re
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from resnet_lite.data.images import decode
from resnet_lite.data.sources import load_dataset
from resnet_lite.errors import UserError
from resnet_lite.models.lite import create_model
from resnet_lite.models.pretrained import initial_model
from resnet_lite.outputs.weights import read_state_dict

from support.crafted import payloads, png_of
from support.formats import write_cifar_py
from support.notebook import SEED_ARCH, SeedNet


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


@pytest.mark.parametrize("kind", ["os.system", "open", "exec"])
@pytest.mark.parametrize("name, victim",
                         [("cifar10", "test_batch"), ("cifar10", "batches.meta"), ("cifar100", "train")])
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
    assert str(error.value) == (f"{path} is not a plain CIFAR batch: it asks to load {asked}; delete {fake.folder} "
                                "and download CIFAR again")


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


BOMB = (10_000, 9_000)  # 90 MP: over PIL's MAX_IMAGE_PIXELS (89.5 MP), under twice it, where PIL would only warn


def test_an_image_over_pils_pixel_limit_is_refused_not_decoded(tmp_path):
    (tmp_path / "small.png").write_bytes(png_of(6, 4))
    assert decode(tmp_path / "small.png").shape == (4, 6, 3)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_of(*BOMB))
    assert bomb.stat().st_size < 20_000
    with pytest.raises(Image.DecompressionBombError, match="90000000 pixels.*shrink the image or remove it"):
        decode(bomb, 8)


