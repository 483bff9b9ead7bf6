"""--data hf:NAME: datasets in the Hugging Face Hub's format, built here with the real `datasets` library (parquet
files as the Hub stores them, a save_to_disk folder, an image folder) and loaded through datasets.load_dataset, offline:
the dataset's classes, exact pixels, the same resizing and cache as an image folder, a real training run, one-line
errors."""
import io
import json

import numpy as np
import pytest
import torch
from formats import write_imagefolder
from PIL import Image

from resnet_lite.data import sources
from resnet_lite.data.images import decode
from resnet_lite.data.sources import load_dataset
from resnet_lite.errors import UserError
from resnet_lite.outputs.weights import load_weights
from resnet_lite.train import main as train_main

datasets = pytest.importorskip("datasets")  # the test extra brings it; a plain install has no hf: support
CLASSES = ["airplane", "boat", "car"]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, and the datasets library's own cache in the test's folder."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _pixels(n, seed, size=(12, 12)):
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def write_parquet(folder, splits=(("train", 30), ("test", 9)), image="img", labels=("label",), size=(12, 12)):
    """A dataset as the Hub stores one: data/<split>-00000-of-00001.parquet with an Image column and ClassLabel ones;
    returns {split: (pixels, {label column: labels})}."""
    written = {}
    for i, (split, n) in enumerate(splits):
        pixels = _pixels(n, i, size)
        columns = {label: [(k + j) % len(CLASSES) for k in range(n)] for j, label in enumerate(labels)}
        features = datasets.Features({image: datasets.Image(),
                                      **{label: datasets.ClassLabel(names=CLASSES) for label in labels}})
        ds = datasets.Dataset.from_dict({image: [Image.fromarray(p) for p in pixels], **columns}, features=features)
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
        written[split] = (pixels, columns)
    return written


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
        {"img": [Image.fromarray(p) for p in _pixels(5, 0)], "label": [0, 1, 2, 0, 1]},
        features=datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}))
    datasets.DatasetDict({"train": images, "test": images}).save_to_disk(str(tmp_path / "saved"))
    saved = load_dataset(f"hf:{tmp_path / 'saved'}", root=str(tmp_path / "root"))
    assert saved.classes == CLASSES and torch.equal(saved.test.images, _as_images(_pixels(5, 0)))

    write_imagefolder(tmp_path / "tree", formats=("png",))  # the datasets library's imagefolder reads it
    hub = load_dataset(f"hf:{tmp_path / 'tree'}", root=str(tmp_path / "root"))
    ours = load_dataset(f"imagefolder:{tmp_path / 'tree'}", root=str(tmp_path / "root"))
    assert hub.classes == ours.classes == ["cat", "dog", "frog"]
    for a, b in ((hub.train, ours.train), (hub.test, ours.test)):
        order = lambda split: sorted(range(len(split)), key=lambda i: (split.labels[i].item(), split.images[i].sum().item()))  # noqa: E731
        assert torch.equal(a.images[order(a)], b.images[order(b)]) and torch.equal(a.labels[order(a)], b.labels[order(b)])


def test_training_on_a_hub_dataset_uses_its_classes(tmp_path):
    write_parquet(tmp_path / "pq", splits=(("train", 64), ("test", 16)), size=(8, 8))
    out = tmp_path / "run"
    assert train_main(["--data", f"hf:{tmp_path / 'pq'}", "--data-dir", str(tmp_path / "root"), "--epochs", "1",
                       "--batch-size", "16", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "pq" and list(summary["per_class_acc"]) == CLASSES and summary["steps"] == 4
    assert load_weights(out / "model_last.safetensors")[1]["classes"] == CLASSES


@pytest.mark.parametrize("spec, options, message", [
    ("hf:nonexistent-org/no-such-dataset", {}, "--data hf:nonexistent-org/no-such-dataset: "
     "datasets.load_dataset('nonexistent-org/no-such-dataset') failed: Couldn't reach"),
    ("hf:{pq}", {"image_column": "pixels"}, "--data hf:{pq} has no column 'pixels' (columns: img, label); set "
     "data.image_column to one of them"),
    ("hf:{pq}", {"label_column": "lable"}, "--data hf:{pq} has no column 'lable' (did you mean 'label'? columns: "
     "img, label); set data.label_column"),
    ("hf:{pq}:other", {}, "--data hf:{pq}:other: datasets.load_dataset('{pq}', 'other') failed: BuilderConfig "
     "'other' not found"),
    ("hf:", {}, "--data hf: names no dataset; write hf:NAME or hf:NAME:CONFIG"),
])
def test_mistakes_are_one_line_errors(spec, options, message, tmp_path):
    write_parquet(tmp_path / "pq")
    fill = {"pq": tmp_path / "pq"}
    with pytest.raises(UserError) as e:
        load_dataset(spec.format(**fill), root=str(tmp_path / "root"), **options)
    assert str(e.value).startswith(message.format(**fill)) and "\n" not in str(e.value)


def test_unreachable_hub_name_says_how_to_fix_it_on_the_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--data", "hf:uoft-cs/cifar10", "--output-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "the Hub cannot be reached" in err
    assert not (tmp_path / "x").exists()


def test_a_dataset_without_a_test_split_or_labels_is_refused(tmp_path):
    write_parquet(tmp_path / "only", splits=(("train", 6),))
    with pytest.raises(UserError, match="has the splits train; it needs train and test"):
        load_dataset(f"hf:{tmp_path / 'only'}", root=str(tmp_path / "root"))
    unlabelled = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(p) for p in _pixels(3, 0)], "label": [0, -1, 1]},
        features=datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}))
    datasets.DatasetDict({"train": unlabelled, "test": unlabelled}).save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(UserError, match=r"has unlabelled images \(label -1\)"):
        load_dataset(f"hf:{tmp_path / 'unlabelled'}", root=str(tmp_path / "root"))
