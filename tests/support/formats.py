"""Tiny datasets written in the official on-disk formats (no pytest needed: CI's user-path step runs this too).

    python tests/formats.py cifar10-bin DIR [N_TRAIN N_TEST]     # DIR/cifar-10-batches-bin, as the official archive

Writers:
- write_cifar_bin(root, name="cifar10", n_train=50, n_test=20, seed=0) -> FakeCifar
      root/cifar-10-batches-bin/{data_batch_1..5.bin, test_batch.bin, batches.meta.txt}
      (name="cifar100": root/cifar-100-binary/{train.bin, test.bin, fine/coarse_label_names.txt}),
      records of label byte(s) + 3072 pixel bytes exactly as the official binary version.
- write_cifar_py(root, name="cifar10", ...) -> FakeCifar
      root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (cifar100: cifar-100-python/
      {train, test, meta}): pickled dicts with the official keys, protocol 2 as in the official archive.
- write_cifar_archive(path, name="cifar10", layout="bin", ...) -> (FakeCifar, md5 of the .tar.gz)
      the official archive's layout: a .tar.gz whose single top folder is the extracted folder above.
- write_imagefolder(root, classes=("cat", "dog", "frog"), counts={"train": 4, "test": 2}, size=(8, 8),
      formats=("png", "jpg")) -> dict split -> list of (path, label, HxWx3 uint8 array written)
      root/<split>/<class>/<i>.<fmt>: real PNG/JPEG files, one flat colour per class (PNG pixel-exact,
      JPEG close), so decoded content can be checked against the class.
Reader: read_wandb_records(path) -> the records of an offline W&B run's .wandb file, as wandb's protobuf Record.
FakeCifar holds what was written: train_images / test_images (uint8 N x 3 x 32 x 32, numpy), train_labels /
test_labels (int64), classes, folder. CIFAR-100 fixtures use 100 fine and 20 coarse class names.
"""
import hashlib
import pickle
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FOLDERS = {
    ("cifar10", "bin"): "cifar-10-batches-bin",
    ("cifar10", "py"): "cifar-10-batches-py",
    ("cifar100", "bin"): "cifar-100-binary",
    ("cifar100", "py"): "cifar-100-python",
}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class FakeCifar:
    folder: Path
    classes: list
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    coarse_train: np.ndarray | None = None
    coarse_test: np.ndarray | None = None


def _fake_cifar(folder, name, n_train, n_test, seed):
    rng = np.random.default_rng(seed)
    num = 10 if name == "cifar10" else 100
    classes = CIFAR10_CLASSES if name == "cifar10" else [f"fine_{i:03d}" for i in range(num)]
    fake = FakeCifar(
        Path(folder), classes,
        rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8), rng.integers(0, num, n_train),
        rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8), rng.integers(0, num, n_test),
    )
    if name == "cifar100":
        fake.coarse_train, fake.coarse_test = fake.train_labels // 5, fake.test_labels // 5
    return fake


def _train_batches(name, n):
    """CIFAR-10 spreads the training set over 5 batch files; CIFAR-100 has one."""
    return np.array_split(np.arange(n), 5) if name == "cifar10" else [np.arange(n)]


def write_cifar_bin(root, name="cifar10", n_train=50, n_test=20, seed=0) -> FakeCifar:
    fake = _fake_cifar(Path(root) / FOLDERS[name, "bin"], name, n_train, n_test, seed)
    fake.folder.mkdir(parents=True, exist_ok=True)

    def records(images, labels, coarse):
        heads = [labels[:, None]] if coarse is None else [coarse[:, None], labels[:, None]]
        return np.concatenate([*(h.astype(np.uint8) for h in heads), images.reshape(len(images), -1)], 1).tobytes()

    if name == "cifar10":
        for i, idx in enumerate(_train_batches(name, n_train), 1):
            (fake.folder / f"data_batch_{i}.bin").write_bytes(
                records(fake.train_images[idx], fake.train_labels[idx], None))
        (fake.folder / "test_batch.bin").write_bytes(records(fake.test_images, fake.test_labels, None))
        # the official file ends in a blank line
        (fake.folder / "batches.meta.txt").write_text("\n".join(fake.classes) + "\n\n")
    else:
        (fake.folder / "train.bin").write_bytes(records(fake.train_images, fake.train_labels, fake.coarse_train))
        (fake.folder / "test.bin").write_bytes(records(fake.test_images, fake.test_labels, fake.coarse_test))
        (fake.folder / "fine_label_names.txt").write_text("\n".join(fake.classes) + "\n")
        (fake.folder / "coarse_label_names.txt").write_text("\n".join(f"coarse_{i:02d}" for i in range(20)) + "\n")
    return fake


def write_cifar_py(root, name="cifar10", n_train=50, n_test=20, seed=0) -> FakeCifar:
    fake = _fake_cifar(Path(root) / FOLDERS[name, "py"], name, n_train, n_test, seed)
    fake.folder.mkdir(parents=True, exist_ok=True)

    def dump(file, obj):
        (fake.folder / file).write_bytes(pickle.dumps(obj, protocol=2))

    def batch(label, images, labels, coarse):
        entry = {"batch_label": label, "data": images.reshape(len(images), -1),
                 "filenames": [f"img_{i}.png" for i in range(len(images))]}
        if coarse is None:
            entry["labels"] = labels.tolist()
        else:
            entry.update(fine_labels=labels.tolist(), coarse_labels=coarse.tolist())
        return entry

    if name == "cifar10":
        for i, idx in enumerate(_train_batches(name, n_train), 1):
            dump(f"data_batch_{i}",
                 batch(f"training batch {i} of 5", fake.train_images[idx], fake.train_labels[idx], None))
        dump("test_batch", batch("testing batch 1 of 1", fake.test_images, fake.test_labels, None))
        dump("batches.meta", {"label_names": fake.classes, "num_cases_per_batch": 10000, "num_vis": 3072})
    else:
        dump("train", batch("training batch 1 of 1", fake.train_images, fake.train_labels, fake.coarse_train))
        dump("test", batch("testing batch 1 of 1", fake.test_images, fake.test_labels, fake.coarse_test))
        dump("meta", {"fine_label_names": fake.classes, "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)]})
    return fake


def write_cifar_archive(path, name="cifar10", layout="bin", **kwargs) -> tuple[FakeCifar, str]:
    """A .tar.gz laid out as the official archive; returns what it holds and its md5."""
    path = Path(path)
    staging = path.parent / f".{path.name}.staging"
    fake = (write_cifar_bin if layout == "bin" else write_cifar_py)(staging, name, **kwargs)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(fake.folder, arcname=fake.folder.name)
    return fake, hashlib.md5(path.read_bytes()).hexdigest()


def write_imagefolder(root, classes=("cat", "dog", "frog"), counts=None, size=(8, 8), formats=("png", "jpg")):
    """ImageFolder tree of real image files; class c is a flat colour, varied slightly per image."""
    counts = counts or {"train": 4, "test": 2}
    written = {}
    for split, count in counts.items():
        written[split] = []
        for label, cls in enumerate(classes):
            folder = Path(root) / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                colour = np.array([(40 + 60 * label) % 256, (200 - 50 * label) % 256, 30 * i % 256], np.uint8)
                pixels = np.broadcast_to(colour, (size[0], size[1], 3)).copy()
                fmt = formats[i % len(formats)]
                path = folder / f"{i:04d}.{fmt}"
                if fmt in ("jpg", "jpeg"):
                    Image.fromarray(pixels).save(path, quality=95)
                else:
                    Image.fromarray(pixels).save(path)
                written[split].append((path, label, pixels))
    return written


if __name__ == "__main__":
    kind, root, *counts = sys.argv[1:]
    if kind != "cifar10-bin":
        sys.exit(f"unknown kind {kind}: only cifar10-bin")
    n_train, n_test = (int(c) for c in counts) if counts else (256, 64)
    print(write_cifar_bin(root, n_train=n_train, n_test=n_test).folder)


# ---------------------------------------------------------------------------------------------- W&B's run files

WANDB_BLOCK, WANDB_HEADER = 32768, 7  # the LevelDB log format wandb writes its .wandb transaction logs in


def wandb_items(items) -> dict:
    """A record's items (history, config or summary: key or nested key, JSON value) as a dict; nested keys joined
    with "/" ("train/loss")."""
    import json

    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def read_wandb_records(path) -> list:
    """Every record of a run's .wandb file as wandb's own protobuf `Record`, CRC-checked.

    wandb >= 0.2x dropped its Python reader (wandb.sdk.internal.datastore; the Go core writes the file), so this is that
    reader's format, unchanged since: a 7-byte file header (":W&B", magic 0xBEE1, version 0), then LevelDB log records
    in 32 KiB blocks (crc32 of type byte + data, length, type FULL/FIRST/MIDDLE/LAST; a block's tail under 7 bytes
    is padding)."""
    import struct
    import zlib

    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:WANDB_HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a W&B transaction log"
    pos, parts, records = WANDB_HEADER, [], []
    while pos + WANDB_HEADER <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + WANDB_HEADER]) if left >= WANDB_HEADER else (0, 0, 0)
        if kind == 0:  # padding to the block's end
            pos += left
            continue
        chunk = data[pos + WANDB_HEADER:pos + WANDB_HEADER + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{path}: bad checksum at byte {pos}"
        pos += WANDB_HEADER + length
        parts.append(chunk)
        if kind in (1, 4):  # FULL, LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
            parts = []
    return records


HUB_CLASSES = ["airplane", "boat", "car"]


def hub_pixels(n, seed, size=(12, 12)):
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def write_parquet(folder, splits=(("train", 30), ("test", 9)), image="img", labels=("label",), size=(12, 12)):
    """A dataset as the Hub stores one (classes: HUB_CLASSES): data/<split>-00000-of-00001.parquet with an Image column
    and ClassLabel ones; returns {split: (pixels, {label column: labels})}."""
    import datasets  # the hf extra's; only the tests that use it need it

    written = {}
    for i, (split, n) in enumerate(splits):
        pixels = hub_pixels(n, i, size)
        columns = {label: [(k + j) % len(HUB_CLASSES) for k in range(n)] for j, label in enumerate(labels)}
        features = datasets.Features({image: datasets.Image(),
                                      **{label: datasets.ClassLabel(names=HUB_CLASSES) for label in labels}})
        ds = datasets.Dataset.from_dict({image: [Image.fromarray(p) for p in pixels], **columns}, features=features)
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
        written[split] = (pixels, columns)
    return written
