"""resnet_lite.data: every dataset spec on tiny official-format fixtures, caching, errors, sharding, stats."""
import dataclasses
import hashlib
import math
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_lite.data import cifar
from resnet_lite.data import loader as loading
from resnet_lite.data import sources as data
from resnet_lite.data.loader import DeviceLoader
from resnet_lite.data.sources import DataConfig, Split, channel_stats, load_data, load_dataset
from resnet_lite.errors import UserError

from support.formats import FOLDERS, write_cifar_archive, write_cifar_bin, write_cifar_py, write_imagefolder

SEED_MEAN, SEED_STD = (0.4914, 0.4821, 0.4465), (0.2470, 0.2434, 0.2615)  # SEED.md, CIFAR-10 training set


def reference_stats(images):
    x = torch.as_tensor(images).double() / 255
    return x.mean(dim=(0, 2, 3)).tolist(), x.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False).tolist()


def official_md5s(monkeypatch, name, folder):
    """Make the fixture's files 'official' by pointing the checksum table at them."""
    source = cifar.SOURCES[name]
    layouts = []
    for layout in source.layouts:
        md5 = {n: hashlib.md5((folder / n).read_bytes()).hexdigest() if (folder / n).exists() else m
               for n, m in layout.train + layout.test}
        layouts.append(dataclasses.replace(
            layout, train=tuple((n, md5[n]) for n, _ in layout.train), test=tuple((n, md5[n]) for n, _ in layout.test),
            meta_md5=(hashlib.md5((folder / layout.meta).read_bytes()).hexdigest()
                      if (folder / layout.meta).exists() else None)))
    monkeypatch.setitem(cifar.SOURCES, name, dataclasses.replace(source, layouts=tuple(layouts)))


# ---------------------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("layout", ["bin", "py"])
def test_cifar_extracted_copy_loads_offline_exactly(tmp_path, name, layout, unreachable_url, monkeypatch):
    monkeypatch.setitem(cifar.SOURCES, name, dataclasses.replace(cifar.SOURCES[name], url=unreachable_url))
    fake = (write_cifar_bin if layout == "bin" else write_cifar_py)(tmp_path, name)
    with pytest.warns(UserWarning, match="differ from the official CIFAR checksums"):  # a subset copy
        ds = load_dataset(name, root=str(tmp_path))
    assert ds.name == name and ds.classes == fake.classes and ds.val is None
    for split, images, labels in [(ds.train, fake.train_images, fake.train_labels),
                                  (ds.test, fake.test_images, fake.test_labels)]:
        assert split.images.dtype == torch.uint8 and split.images.is_contiguous()
        assert torch.equal(split.images, torch.from_numpy(images))  # channel planes, row-major: CHW
        assert split.labels.dtype == torch.int64 and torch.equal(split.labels, torch.from_numpy(labels))
    mean, std = reference_stats(fake.train_images)
    assert ds.mean == pytest.approx(mean, abs=1e-12) and ds.std == pytest.approx(std, abs=1e-12)


def test_cifar_with_official_checksums_loads_without_warning(cifar10_bin, monkeypatch):
    official_md5s(monkeypatch, "cifar10", cifar10_bin.folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset("cifar10", root=str(cifar10_bin.folder.parent), download=False)
    assert len(ds.train) == 50 and len(ds.test) == 20


def test_cifar_one_changed_file_one_line_warning(cifar10_bin, monkeypatch):
    official_md5s(monkeypatch, "cifar10", cifar10_bin.folder)
    path = cifar10_bin.folder / "data_batch_3.bin"
    raw = bytearray(path.read_bytes())
    raw[5] ^= 0xFF  # a converted copy: same structure, other bytes
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning) as record:
        load_dataset("cifar10", root=str(cifar10_bin.folder.parent))
    (w,) = record
    assert "data_batch_3.bin" in str(w.message) and "\n" not in str(w.message) and "data_batch_1" not in str(w.message)


@pytest.mark.parametrize("layout, victim", [("bin", "data_batch_4.bin"), ("bin", "test_batch.bin"),
                                            ("py", "data_batch_2"), ("py", "test_batch")])
def test_cifar_missing_batch_names_the_file(tmp_path, layout, victim):
    fake = (write_cifar_bin if layout == "bin" else write_cifar_py)(tmp_path)
    (fake.folder / victim).unlink()
    with pytest.raises(UserError, match=f"{victim}.* is missing"):
        load_dataset("cifar10", root=str(tmp_path))


@pytest.mark.parametrize("layout, victim",
                         [("bin", "data_batch_2.bin"), ("py", "data_batch_5"), ("py", "batches.meta")])
def test_cifar_truncated_batch_names_the_file(tmp_path, layout, victim):
    fake = (write_cifar_bin if layout == "bin" else write_cifar_py)(tmp_path)
    path = fake.folder / victim
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match=f"{victim} is truncated"):
        load_dataset("cifar10", root=str(tmp_path))


def test_cifar_label_out_of_range_is_an_error(cifar10_bin):
    path = cifar10_bin.folder / "test_batch.bin"
    raw = bytearray(path.read_bytes())
    raw[0] = 10  # the first record's label byte; CIFAR-10 has labels 0-9
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="label 10"):
        load_dataset("cifar10", root=str(cifar10_bin.folder.parent))


@pytest.mark.parametrize("name, layout", [("cifar10", "bin"), ("cifar100", "bin"), ("cifar10", "py")])
def test_cifar_download_verifies_md5_and_extracts(tmp_path, http_server, monkeypatch, name, layout):
    served = tmp_path / "served"
    served.mkdir()
    fake, md5 = write_cifar_archive(served / "archive.tar.gz", name, layout)
    source = cifar.SOURCES[name]
    layouts = source.layouts if layout == "bin" else source.layouts[::-1]  # the archive's layout comes first
    monkeypatch.setitem(cifar.SOURCES, name, cifar.Source(f"{http_server(served)}/archive.tar.gz", md5, layouts))
    root = tmp_path / "cache"
    with pytest.warns(UserWarning, match="checksums"):  # the fixture's batches are not the official ones
        ds = load_dataset(name, root=str(root))
    assert torch.equal(ds.train.images, torch.from_numpy(fake.train_images))
    assert torch.equal(ds.test.labels, torch.from_numpy(fake.test_labels))
    assert sorted(p.name for p in root.iterdir()) == sorted([FOLDERS[name, layout],
                                                              f"{FOLDERS[name, layout]}.stats.json"])


def test_cifar_download_with_wrong_md5_leaves_nothing(tmp_path, http_server, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    write_cifar_archive(served / "archive.tar.gz")
    monkeypatch.setitem(cifar.SOURCES, "cifar10", dataclasses.replace(
        cifar.SOURCES["cifar10"], url=f"{http_server(served)}/archive.tar.gz", md5="0" * 32))
    root = tmp_path / "cache"
    with pytest.raises(UserError, match="expected 0{32}"):
        load_dataset("cifar10", root=str(root))
    assert list(root.iterdir()) == []


def test_no_network_names_url_path_and_alternative(tmp_path, unreachable_url, monkeypatch):
    monkeypatch.setitem(cifar.SOURCES, "cifar10", dataclasses.replace(cifar.SOURCES["cifar10"], url=unreachable_url))
    with pytest.raises(UserError) as e:
        load_dataset("cifar10", root=str(tmp_path))
    message = str(e.value)
    assert unreachable_url in message and str(tmp_path / "cifar-10-batches-bin") in message
    assert "--data imagefolder:PATH" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []  # no partial download left behind


def test_download_false_and_absent_is_an_error(tmp_path):
    with pytest.raises(UserError, match="download=false"):
        load_dataset("cifar10", root=str(tmp_path), download=False)


def test_default_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.delenv("RESNET_LITE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_root() == tmp_path / "xdg" / "resnet_lite" / "data"
    monkeypatch.setenv("RESNET_LITE_DATA", str(tmp_path / "mine"))
    assert data.default_root() == tmp_path / "mine"
    write_cifar_bin(tmp_path / "mine")
    with pytest.warns(UserWarning):
        assert len(load_dataset("cifar10").train) == 50  # root=None reads the env's folder


# ---------------------------------------------------------------------------------------------- imagefolder


def test_imagefolder_loads_in_torchvision_order(imagefolder, tmp_path):
    from torchvision.datasets import ImageFolder

    ds = load_dataset(f"imagefolder:{imagefolder.root}", root=str(tmp_path / "cache"))
    reference = ImageFolder(str(imagefolder.root / "train"))
    assert ds.classes == reference.classes == ["cat", "dog", "frog"]
    assert ds.train.labels.tolist() == reference.targets
    assert len(ds.test) == 6 and ds.val is None and ds.train.images.shape == (12, 3, 8, 8)
    for i, (path, _label) in enumerate(reference.samples):
        expected = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(ds.train.images[i], expected), path
    written = {str(p): px for p, _, px in imagefolder.files["train"]}
    png = next(i for i, (p, _) in enumerate(reference.samples) if p.endswith(".png"))
    assert torch.equal(ds.train.images[png], torch.from_numpy(written[reference.samples[png][0]]).permute(2, 0, 1))
    mean, std = reference_stats(ds.train.images)
    assert ds.mean == pytest.approx(mean, abs=1e-12) and ds.std == pytest.approx(std, abs=1e-12)


def test_imagefolder_val_folder_becomes_val_split(tmp_path):
    write_imagefolder(tmp_path / "im", counts={"train": 3, "val": 2, "test": 1})
    ds = load_dataset(f"imagefolder:{tmp_path / 'im'}", root=str(tmp_path / "cache"))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 6, 3)
    assert ds.val.labels.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(UserError, match="use one of the two"):
        load_dataset(f"imagefolder:{tmp_path / 'im'}", root=str(tmp_path / "cache"), holdout=2)


def test_imagefolder_cache_is_used_and_invalidated(tmp_path):
    # BMP: the file size does not depend on the pixels
    write_imagefolder(tmp_path / "im", formats=("bmp", "png", "jpg"))
    spec, cache = f"imagefolder:{tmp_path / 'im'}", tmp_path / "cache"
    first = load_dataset(spec, root=str(cache))
    (cache_file,) = cache.glob("imagefolder-*.pt")
    (stats_file,) = cache.glob("imagefolder-*.stats.json")

    # new pixels, same size and mtime: the fingerprint is unchanged, so the cached (old) pixels come back
    target = tmp_path / "im" / "train" / "dog" / "0000.bmp"
    st = target.stat()
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(target)
    assert target.stat().st_size == st.st_size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert torch.equal(load_dataset(spec, root=str(cache)).train.images, first.train.images)

    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touch: decoded again, new pixels
    second = load_dataset(spec, root=str(cache))
    assert (second.train.images[4] == 7).all() and not torch.equal(second.train.images, first.train.images)
    assert second.mean != first.mean  # stats recomputed for the new content
    assert not cache_file.exists() and len(list(cache.glob("imagefolder-*.pt"))) == 1  # the stale decode is gone

    (tmp_path / "im" / "test" / "cat" / "0001.png").unlink()  # a removed file invalidates too
    assert len(load_dataset(spec, root=str(cache)).test) == 5
    assert list(cache.glob("imagefolder-*.stats.json")) == [stats_file] and len(list(cache.iterdir())) == 2


def test_imagefolder_image_size_resizes_mixed_sizes(tmp_path):
    write_imagefolder(tmp_path / "im", counts={"train": 2, "test": 1})
    Image.new("RGB", (20, 12), (255, 0, 0)).save(tmp_path / "im" / "train" / "dog" / "big.png")
    with pytest.raises(UserError, match=r"big.png is 20x12 but .* is 8x8; set data.image_size"):
        load_dataset(f"imagefolder:{tmp_path / 'im'}", root=str(tmp_path / "cache"))
    ds = load_dataset(f"imagefolder:{tmp_path / 'im'}", root=str(tmp_path / "cache"), image_size=16)
    assert ds.train.images.shape == (7, 3, 16, 16)
    assert ds.train.images[4].float().mean(dim=(1, 2)).tolist() == pytest.approx([255, 0, 0], abs=1)  # dog/big.png


def test_imagefolder_splits_of_different_sizes_is_an_error(tmp_path):
    write_imagefolder(tmp_path / "im", counts={"train": 2})
    write_imagefolder(tmp_path / "im", counts={"test": 1}, size=(4, 4))
    with pytest.raises(UserError, match=r"test.*is 4x4 but earlier images are 8x8"):
        load_dataset(f"imagefolder:{tmp_path / 'im'}", root=str(tmp_path / "cache"))


def test_imagefolder_unreadable_image_names_the_file(imagefolder, tmp_path):
    bad = imagefolder.root / "test" / "frog" / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(UserError, match=f"{bad} cannot be read as an image"):
        load_dataset(f"imagefolder:{imagefolder.root}", root=str(tmp_path / "cache"))


def test_imagefolder_empty_class_folder_names_the_folder(imagefolder, tmp_path):
    (imagefolder.root / "train" / "emu").mkdir()
    (imagefolder.root / "train" / "emu" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match=f"{imagefolder.root / 'train' / 'emu'} has no images"):
        load_dataset(f"imagefolder:{imagefolder.root}", root=str(tmp_path / "cache"))


def test_imagefolder_classes_differing_between_splits(imagefolder, tmp_path):
    write_imagefolder(imagefolder.root, classes=("cat", "dog", "frog", "yak"), counts={"test": 1})
    with pytest.raises(UserError, match=r"test has classes that differ .*\(yak\)"):
        load_dataset(f"imagefolder:{imagefolder.root}", root=str(tmp_path / "cache"))


@pytest.mark.parametrize("layout", ["nothing", "no test"])
def test_imagefolder_missing_split_folder(tmp_path, layout):
    if layout == "no test":
        write_imagefolder(tmp_path / "im", counts={"train": 1})
    with pytest.raises(UserError, match="needs .*/train/<class>/"):
        load_dataset(f"imagefolder:{tmp_path / 'im'}", root=str(tmp_path / "cache"))


def test_synthetic_is_deterministic_and_learnable():
    a = load_dataset("synthetic", synthetic_train=600, synthetic_test=200)
    b = load_data(DataConfig(spec="synthetic", synthetic_train=600, synthetic_test=200))
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.train.images.shape == (600, 3, 32, 32) and len(a.classes) == 10
    assert torch.bincount(a.train.labels).tolist() == [60] * 10
    assert not torch.equal(a.train.images[:200], a.test.images)
    # the class signal: nearest training-class mean classifies held-out images well
    x_train, x_test = a.train.images.float().flatten(1), a.test.images.float().flatten(1)
    means = torch.stack([x_train[a.train.labels == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(x_test, means).argmin(1) == a.test.labels).float().mean()
    assert accuracy > 0.9
    synthetic = load_dataset("synthetic", synthetic_train=20, synthetic_test=10, image_size=16)
    assert synthetic.train.images.shape == (20, 3, 16, 16)


def test_holdout_is_a_seeded_disjoint_split(cifar10_bin):
    root = str(cifar10_bin.folder.parent)
    with pytest.warns(UserWarning):
        ds = load_dataset("cifar10", root=root, holdout=12)
    with pytest.warns(UserWarning):
        again = load_dataset("cifar10", root=root, holdout=12)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (38, 12, 20)
    assert torch.equal(ds.val.images, again.val.images)

    def rows(x):
        return {bytes(r) for r in x.flatten(1).numpy()}

    assert rows(ds.train.images) | rows(ds.val.images) == rows(torch.from_numpy(cifar10_bin.train_images))
    assert not rows(ds.train.images) & rows(ds.val.images)
    mean, std = reference_stats(ds.train.images)  # stats of the post-holdout training images
    assert ds.mean == pytest.approx(mean, abs=1e-12) and ds.std == pytest.approx(std, abs=1e-12)
    with pytest.raises(UserError, match="leaves no training images"), pytest.warns(UserWarning):
        load_dataset("cifar10", root=root, holdout=50)


def test_stats_cache_written_and_reused(cifar10_bin):
    root = str(cifar10_bin.folder.parent)
    with pytest.warns(UserWarning):
        ds = load_dataset("cifar10", root=root)
    stats = cifar10_bin.folder.parent / "cifar-10-batches-bin.stats.json"
    text = stats.read_text()
    assert str(ds.mean[0]) in text
    stats.write_text(text.replace(str(ds.mean[0]), "0.125"))  # what the cache says is what comes back
    with pytest.warns(UserWarning):
        assert load_dataset("cifar10", root=root).mean[0] == 0.125


def test_channel_stats_match_float64_reference():
    images = torch.randint(0, 256, (1000, 3, 7, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[:, 2] //= 3
    mean, std = channel_stats(images, batch=64)
    ref_mean, ref_std = reference_stats(images)
    assert mean == pytest.approx(ref_mean, abs=1e-12) and std == pytest.approx(ref_std, abs=1e-12)


def test_bad_spec_and_options_are_user_errors():
    with pytest.raises(UserError, match="unknown dataset 'mnist'; use one of cifar10"):
        load_dataset("mnist")
    with pytest.raises(UserError, match="unknown data option"):
        load_dataset("synthetic", holdouts=3)
    with pytest.raises(UserError, match="image_size"):
        load_dataset("synthetic", image_size=0)


# ---------------------------------------------------------------------------------------------- device loader


def tiny_split(n):
    return Split(torch.zeros(n, 3, 1, 1, dtype=torch.uint8), torch.arange(n))  # label = index, to track samples


def test_seed_epoch_has_391_steps():
    loader = DeviceLoader(tiny_split(50_000), 128)
    assert len(loader) == 391 and loader.num_samples == 50_000
    assert [len(y) for _, y in loader][-2:] == [128, 50_000 - 390 * 128]
    assert len(DeviceLoader(tiny_split(50_000), 128, drop_last=True)) == 390


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("n, batch_size", [(100, 12), (97, 12), (50, 24), (25, 12)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_train_shards_disjoint_equal_steps_same_permutation(world_size, n, batch_size, drop_last):
    batch_size = batch_size // world_size * world_size
    loaders = [DeviceLoader(tiny_split(n), batch_size, rank=r, world_size=world_size, seed=3, drop_last=drop_last)
               for r in range(world_size)]
    epochs = []
    for epoch in (0, 1):
        batches = []
        for loader in loaders:
            loader.set_epoch(epoch)
            batches.append([y.tolist() for x, y in loader])
            assert all(x.dtype == torch.uint8 and x.shape[1:] == (3, 1, 1) for x, _ in loader)
        assert len({len(b) for b in batches}) == 1 and len(batches[0]) == len(loaders[0])  # same steps on every rank
        steps = n // batch_size if drop_last else math.ceil(n / batch_size)
        if not drop_last and 0 < n % batch_size < world_size:
            steps -= 1
        assert len(batches[0]) == steps
        seen = [i for b in batches for batch in b for i in batch]
        assert len(seen) == len(set(seen))  # disjoint across ranks and batches
        assert all(len(batches[r][k]) == len(batches[0][k]) for r in range(world_size) for k in range(steps))
        assert [loader.num_samples for loader in loaders] == [sum(map(len, batches[0]))] * world_size
        # the ranks' parts of global batch k, side by side, are a slice of one permutation of range(n)
        order = [i for k in range(steps) for r in range(world_size) for i in batches[r][k]]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(loading._epoch_seed(3, epoch))).tolist()
        full = [perm[k * batch_size : (k + 1) * batch_size][: len(batches[0][k]) * world_size] for k in range(steps)]
        assert order == [i for part in full for i in part]
        assert n - len(seen) == (n % batch_size if drop_last else n % batch_size % world_size)
        epochs.append(order)
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("n, batch_size", [(100, 16), (97, 10), (5, 8), (3, 8)])
def test_eval_shards_count_every_image_once(world_size, n, batch_size):
    seen, sizes = [], []
    for r in range(world_size):
        loader = DeviceLoader(tiny_split(n), batch_size, train=False, rank=r, world_size=world_size)
        labels = [y for _, y in loader]
        assert len(labels) == len(loader) and sum(map(len, labels)) == loader.num_samples
        assert all(len(y) <= math.ceil(batch_size / world_size) for y in labels)
        sizes.append(loader.num_samples)
        seen += [i for y in labels for i in y.tolist()]
    assert sorted(seen) == list(range(n)) and seen == list(range(n))  # once each, contiguous shards in rank order
    assert max(sizes) - min(sizes) <= 1


def test_loader_same_seed_same_order_and_different_seed_differs():
    def order(seed, epoch):
        loader = DeviceLoader(tiny_split(64), 8, seed=seed)
        loader.set_epoch(epoch)
        return [i for _, y in loader for i in y.tolist()]

    assert order(0, 2) == order(0, 2) and order(0, 2) != order(1, 2) and sorted(order(5, 0)) == list(range(64))


def test_loader_gathers_images_with_their_labels():
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 3, 2, 2)
    loader = DeviceLoader(Split(images, torch.arange(40)), 16, rank=1, world_size=2)
    for x, y in loader:
        assert x.is_contiguous() and torch.equal(x[:, 0, 0, 0].long(), y)


def test_loader_rejects_indivisible_batch():
    with pytest.raises(UserError, match="batch size 10 does not split over 3 processes"):
        DeviceLoader(tiny_split(30), 10, world_size=3)
    DeviceLoader(tiny_split(30), 10, world_size=3, train=False)  # eval batches may be uneven


# ---------------------------------------------------------------------------------------------- the real images
