"""--data hf:NAME: datasets in the Hugging Face Hub's format, built here with the real `datasets` library (parquet
files as the Hub stores them, a save_to_disk folder, an image folder) and loaded through datasets.load_dataset, offline:
the dataset's classes, exact pixels, the same resizing and cache as an image folder, a real training run, one-line
errors."""
import io

import pytest
import torch
from PIL import Image

from resnet_lite.data import sources
from resnet_lite.data.images import decode
from resnet_lite.data.sources import load_dataset
from resnet_lite.errors import UserError

from support.formats import HUB_CLASSES, hub_pixels, write_imagefolder, write_parquet

datasets = pytest.importorskip("datasets")  # the test extra brings it; a plain install has no hf: support
pytestmark = pytest.mark.usefixtures("hub_offline")
CLASSES = HUB_CLASSES


def _as_images(pixels):
    return torch.from_numpy(pixels).permute(0, 3, 1, 2)


def test_a_parquet_dataset_loads_with_its_class_names_and_exact_pixels(tmp_path):
    written = write_parquet(tmp_path / "pq", splits=(("train", 30), ("validation", 6), ("test", 9)))
    ds = load_dataset(f"hf:{tmp_path / 'pq'}", root=str(tmp_path / "root"))
    assert ds.classes == CLASSES and ds.name == "pq"
    for split, part in (("train", ds.train), ("test", ds.test), ("validation", ds.val)):
        pixels, labels = written[split]
        assert torch.equal(part.images, _as_images(pixels)) and part.labels.tolist() == labels["label"]


def test_image_size_resizes_as_an_image_folder_does(tmp_path):
    written = write_parquet(tmp_path / "pq", size=(12, 16))
    ds = load_dataset(f"hf:{tmp_path / 'pq'}", root=str(tmp_path / "root"), image_size=8)
    png = io.BytesIO()
    Image.fromarray(written["test"][0][3]).save(png, format="PNG")
    assert ds.test.images.shape == (9, 3, 8, 8)
    assert torch.equal(ds.test.images[3], torch.from_numpy(decode(png, 8).copy()).permute(2, 0, 1))


def test_cifar100s_columns_are_found_and_others_can_be_named(tmp_path):
    written = write_parquet(tmp_path / "c100", image="image", labels=("fine_label", "coarse_label"))
    fine = load_dataset(f"hf:{tmp_path / 'c100'}", root=str(tmp_path / "root"))
    assert fine.train.labels.tolist() == written["train"][1]["fine_label"]
    coarse = load_dataset(f"hf:{tmp_path / 'c100'}", root=str(tmp_path / "root"), label_column="coarse_label")
    assert coarse.train.labels.tolist() == written["train"][1]["coarse_label"] != written["train"][1]["fine_label"]


def test_decoded_once_then_read_from_the_cache_until_the_files_change(tmp_path, monkeypatch):
    spec, root = f"hf:{tmp_path / 'pq'}", str(tmp_path / "root")
    write_parquet(tmp_path / "pq")
    first = load_dataset(spec, root=root)
    assert len(list((tmp_path / "root").glob("hf-pq-*.pt"))) == 1
    real = sources._decode_images

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(sources, "_decode_images", refuse)
    again = load_dataset(spec, root=root)
    assert torch.equal(again.train.images, first.train.images) and again.mean == first.mean
    (tmp_path / "pq/data/train-00000-of-00001.parquet").unlink()
    (tmp_path / "pq/data/test-00000-of-00001.parquet").unlink()
    written = write_parquet(tmp_path / "pq", splits=(("train", 20), ("test", 9)))  # other pixels, other rows
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(spec, root=root)
    monkeypatch.setattr(sources, "_decode_images", real)
    changed = load_dataset(spec, root=root)
    assert torch.equal(changed.train.images, _as_images(written["train"][0]))


def test_a_save_to_disk_folder_and_an_image_folder_load_too(tmp_path):
    images = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(p) for p in hub_pixels(5, 0)], "label": [0, 1, 2, 0, 1]},
        features=datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}))
    datasets.DatasetDict({"train": images, "test": images}).save_to_disk(str(tmp_path / "saved"))
    saved = load_dataset(f"hf:{tmp_path / 'saved'}", root=str(tmp_path / "root"))
    assert saved.classes == CLASSES and torch.equal(saved.test.images, _as_images(hub_pixels(5, 0)))

    write_imagefolder(tmp_path / "tree", formats=("png",))  # the datasets library's imagefolder reads it
    hub = load_dataset(f"hf:{tmp_path / 'tree'}", root=str(tmp_path / "root"))
    ours = load_dataset(f"imagefolder:{tmp_path / 'tree'}", root=str(tmp_path / "root"))
    assert hub.classes == ours.classes == ["cat", "dog", "frog"]

    def order(split):
        return sorted(range(len(split)), key=lambda i: (split.labels[i].item(), split.images[i].sum().item()))

    for a, b in ((hub.train, ours.train), (hub.test, ours.test)):
        assert torch.equal(a.images[order(a)], b.images[order(b)])
        assert torch.equal(a.labels[order(a)], b.labels[order(b)])


def test_a_dataset_without_a_test_split_or_labels_is_refused(tmp_path):
    write_parquet(tmp_path / "only", splits=(("train", 6),))
    with pytest.raises(UserError, match="has the splits train; it needs train and test"):
        load_dataset(f"hf:{tmp_path / 'only'}", root=str(tmp_path / "root"))
    unlabelled = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(p) for p in hub_pixels(3, 0)], "label": [0, -1, 1]},
        features=datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}))
    datasets.DatasetDict({"train": unlabelled, "test": unlabelled}).save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(UserError, match=r"has unlabelled images \(label -1\)"):
        load_dataset(f"hf:{tmp_path / 'unlabelled'}", root=str(tmp_path / "root"))
