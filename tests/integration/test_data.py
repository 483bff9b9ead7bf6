"""Data loading: the training runs and real processes. The rest, and what the file tests and why:
tests/unit/test_data.py."""

import numpy as np
import pytest
import torch

from resnet_lite.data import sources as data
from resnet_lite.data.sources import load_dataset
from resnet_lite.errors import UserError

SEED_MEAN, SEED_STD = (0.4914, 0.4821, 0.4465), (0.2470, 0.2434, 0.2615)  # SEED.md, CIFAR-10 training set


@pytest.mark.slow
def test_decoding_in_a_process_pool_matches_inline(imagefolder):
    paths = [p for p, _, _ in imagefolder.files["train"]]
    inline, size = data._decode_images(paths, None, workers=1)
    pooled, pooled_size = data._decode_images(paths, None, workers=2)
    assert np.array_equal(inline, pooled) and size == pooled_size == (8, 8)
    bad = imagefolder.root / "train" / "cat" / "zz.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError, match="zz.png cannot be read"):
        data._decode_images(paths + [bad], None, workers=2)


# -------------------------------------------------------------------------------------------- synthetic, holdout, stats


@pytest.mark.slow
def test_real_cifar10_jpeg_loads(cifar10_jpeg_tree, tmp_path_factory):
    cache = tmp_path_factory.mktemp("jpeg_cache")
    ds = load_dataset(f"imagefolder:{cifar10_jpeg_tree}", root=str(cache))
    assert (len(ds.train), len(ds.test)) == (50_000, 10_000) and ds.train.images.shape[1:] == (3, 32, 32)
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert torch.bincount(ds.train.labels).tolist() == [5000] * 10
    assert ds.mean == pytest.approx(SEED_MEAN, abs=0.01) and ds.std == pytest.approx(SEED_STD, abs=0.01)
    again = load_dataset(f"imagefolder:{cifar10_jpeg_tree}", root=str(cache))  # from the cache
    assert torch.equal(again.test.images, ds.test.images) and again.mean == ds.mean
