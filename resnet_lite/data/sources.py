"""Datasets as uint8 tensors, and a loader that keeps a whole split on the training device.

    ds = load_dataset("cifar10")                   # or "cifar100", "imagefolder:PATH", "hf:NAME", "synthetic"
    loader = DeviceLoader(ds.train, 128, device="cuda", rank=rank, world_size=world, seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader: ...         # uint8 N x 3 x H x W and int64 N, already on the device

CIFAR comes from the official archives (resnet_lite.data.cifar). `imagefolder:PATH` reads
PATH/{train,val,test}/<class>/* in torchvision's ImageFolder class order, decodes once and caches the tensors keyed by
every file's (path, size, mtime). `hf:NAME[:CONFIG]` reads a dataset in the Hugging Face Hub's format
(resnet_lite.data.hub), decoded and cached the same way, keyed by the dataset's fingerprint. Per-channel mean/std come
from the training split and are cached beside the data.
"""
import hashlib
import importlib.util
import json
import math
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..outputs.files import atomic_write
from . import cifar
from .hub import open_hub, parse_spec
from .images import IMAGE_ERRORS, decode, image_extensions, list_images

SPECS = "cifar10 | cifar100 | imagefolder:PATH | hf:NAME[:CONFIG] | synthetic"
HOLDOUT_SEED = 0  # fixed, so the held-out images are the same whatever the training seed
CACHE_VERSION = 2  # bump when the decoded-cache format or decoding changes (2: centre crop, not a squash)
POOL_MIN_IMAGES = 4096  # below this, decoding in this process beats starting workers


@dataclass
class DataConfig:
    spec: str = field(default="cifar10", metadata={"help": f"dataset: {SPECS} (a Hugging Face Hub name or a local "
                                                           "folder datasets.load_dataset reads)"})
    root: str | None = field(default=None, metadata={
        "help": "download/cache dir; null -> $RESNET_LITE_DATA or the user cache dir"})
    image_size: int | None = field(default=None, metadata={
        "help": "imagefolder and hf: images to this square size: the shorter side resized, the centre cut out (as "
                "timm's eval transform and predict do); null = all must share one size"})
    image_column: str | None = field(default=None, metadata={"help": "hf: the image column; null -> img, else image"})
    label_column: str | None = field(default=None, metadata={
        "help": "hf: the label column; null -> label, else fine_label"})
    holdout: int = field(default=0, metadata={
        "help": "training images held out (fixed-seed permutation) as a `val` split for model selection"})
    download: bool = field(default=True, metadata={"help": "download CIFAR when it is not in root yet"})
    synthetic_train: int = field(default=10000, metadata={"help": "training images, for spec synthetic"})
    synthetic_test: int = field(default=2000, metadata={"help": "test images, for spec synthetic"})


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x 3 x H x W, contiguous
    labels: torch.Tensor  # int64, N

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 N x 3 x H x W, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"{len(self.labels)} labels for {len(self.images)} images")
        self.images = self.images.contiguous()
        self.labels = self.labels.to(torch.int64).contiguous()

    def __len__(self):
        return len(self.labels)


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    val: Split | None  # from holdout, or an imagefolder `val` folder
    classes: list[str]
    mean: tuple[float, float, float]  # per channel, of the (post-holdout) training split, in [0, 1] units
    std: tuple[float, float, float]


def default_root() -> Path:
    if os.environ.get("RESNET_LITE_DATA"):
        return Path(os.environ["RESNET_LITE_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "resnet_lite" / "data"


def load_data(cfg: DataConfig) -> Dataset:
    return load_dataset(**asdict(cfg))


def check_data(cfg: DataConfig) -> None:
    """The mistakes in `cfg` that show without reading an image or the network: bad options, an unknown dataset, an
    image folder without train/ and test/, CIFAR absent with data.download=false. The trainer checks them before its
    processes start working together, so that every process stops alike."""
    if cfg.image_size is not None and cfg.image_size < 1:
        raise UserError(f"data.image_size={cfg.image_size} must be a positive number of pixels (or null)")
    if cfg.holdout < 0:
        raise UserError(f"data.holdout={cfg.holdout} must be >= 0")
    if cfg.spec in cifar.SOURCES:
        if not cfg.download:
            cifar.find_or_download(cfg.spec, _root(cfg), download=False)
    elif cfg.spec.startswith("imagefolder:"):
        _check_imagefolder(Path(cfg.spec.split(":", 1)[1]).expanduser())
    elif cfg.spec.startswith("hf:"):
        parse_spec(cfg.spec)
        if importlib.util.find_spec("datasets") is None:
            raise UserError(f"--data {cfg.spec} needs the datasets package: pip install 'resnet_lite[hf]'")
    elif cfg.spec == "synthetic":
        for n in (cfg.synthetic_train, cfg.synthetic_test):
            if n < 1:
                raise UserError(f"synthetic split size {n} must be >= 1")
    else:
        raise UserError(f"unknown dataset '{cfg.spec}'; use one of {SPECS}")


def _root(cfg: DataConfig) -> Path:
    return Path(cfg.root).expanduser() if cfg.root else default_root()


def load_dataset(spec: str = "cifar10", root: str | None = None, **options) -> Dataset:
    """Load `spec` (cifar10 | cifar100 | imagefolder:PATH | hf:NAME[:CONFIG] | synthetic); options are the other
    DataConfig fields."""
    known = {f.name for f in fields(DataConfig)} - {"spec", "root"}
    if unknown := set(options) - known:
        raise UserError(f"unknown data option(s) {sorted(unknown)}; known: {sorted(known)}")
    cfg = DataConfig(spec=spec, root=root, **options)
    check_data(cfg)
    data_root = _root(cfg)  # a Path: the option may be None or a str

    if spec in cifar.SOURCES:
        layout, folder = cifar.find_or_download(spec, data_root, cfg.download)
        x_train, y_train, x_test, y_test, classes = cifar.read(layout, folder)
        train = Split(torch.from_numpy(x_train), torch.from_numpy(y_train))
        test = Split(torch.from_numpy(x_test), torch.from_numpy(y_test))
        key = _fingerprint(folder, cifar.files(layout, folder))
        name, val, cache = spec, None, (folder.parent, layout.folder)
    elif spec.startswith("imagefolder:"):
        path = Path(spec.split(":", 1)[1]).expanduser()
        name = path.resolve().name
        splits, classes, key, prefix = _load_imagefolder(path, data_root, cfg.image_size)
        train, test, val = splits["train"], splits["test"], splits.get("val")
        if val is not None and cfg.holdout:
            raise UserError(f"{path / 'val'} exists and data.holdout={cfg.holdout}; "
                            f"use one of the two (holdout=0 to use the folder)")
        cache = (data_root, prefix)
    elif spec.startswith("hf:"):
        hub = open_hub(spec, cfg.image_column, cfg.label_column)
        key = hashlib.sha256(f"{hub.fingerprint}/{cfg.image_size}/{CACHE_VERSION}".encode()).hexdigest()[:16]
        splits = _decoded(data_root, hub.prefix, key, hub.classes, lambda: _decode_hub(hub, cfg.image_size))
        name, classes, train, test, val = hub.name, hub.classes, splits["train"], splits["test"], splits.get("val")
        if val is not None and cfg.holdout:
            raise UserError(f"{spec} has a validation split and data.holdout={cfg.holdout}; use one of the two "
                            f"(holdout=0 to use the split)")
        cache = (data_root, hub.prefix)
    elif spec == "synthetic":
        size = cfg.image_size or 32
        train, test = _synthetic(cfg.synthetic_train, 0, size), _synthetic(cfg.synthetic_test, 1, size)
        name, val, cache, classes = "synthetic", None, None, [f"class{i}" for i in range(SYNTHETIC_CLASSES)]

    if cfg.holdout:
        train, val = _hold_out(train, cfg.holdout)
    mean, std = _cached_stats(cache, key if cache else None, cfg.holdout, train.images)
    return Dataset(name, train, test, val, list(classes), mean, std)


def channel_stats(images: torch.Tensor, batch: int = 4096) -> tuple[tuple, tuple]:
    """Per-channel mean and (population) std of uint8 N x 3 x H x W images, in [0, 1] units.

    Counts each channel's 256 pixel values a batch at a time (no float copy of the set; 0.7 s for CIFAR-10's training
    split on 2 CPU cores, against 4.6 s summing float64 squares), then sums value * count and value^2 * count in
    float64: exact for 8-bit pixels."""
    counts = torch.zeros(3, 256, dtype=torch.int64, device=images.device)
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        for c in range(3):
            counts[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256)
    counts = counts.cpu().double()
    values = torch.arange(256, dtype=torch.float64)
    total = counts.sum(dim=1)
    mean = (counts * values).sum(dim=1) / total
    std = ((counts * values**2).sum(dim=1) / total - mean**2).clamp_min(0).sqrt()
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())


def _hold_out(train: Split, holdout: int) -> tuple[Split, Split]:
    if holdout >= len(train):
        raise UserError(f"data.holdout={holdout} leaves no training images (the training split has {len(train)})")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    val_idx, train_idx = perm[:holdout].sort().values, perm[holdout:].sort().values
    val = Split(train.images[val_idx], train.labels[val_idx])
    return Split(train.images[train_idx], train.labels[train_idx]), val


# ---------------------------------------------------------------------------------------------- caching


def _fingerprint(base, files) -> str:
    """Hash of (relative path, size, mtime_ns) of every file: any edit, touch, addition or removal changes it."""
    base = os.path.join(str(base), "")
    h = hashlib.sha256(str(CACHE_VERSION).encode())
    for path in map(str, files):  # plain strings: pathlib costs more than the stat calls for 60k files
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise UserError(f"{path} is missing") from None
        h.update(f"{path.removeprefix(base)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _cached_stats(cache, key, holdout, images):
    """mean/std of `images`, read from / written to `<dir>/<stem>.stats.json` when the key matches."""
    if cache is None:
        return channel_stats(images)
    directory, stem = cache
    path = directory / f"{stem}.stats.json"
    entry = f"{key}/holdout={holdout}/seed={HOLDOUT_SEED}"
    try:
        stored = json.loads(path.read_text())
        if entry in stored:
            return tuple(stored[entry]["mean"]), tuple(stored[entry]["std"])
        stored = {k: v for k, v in stored.items() if k.startswith(f"{key}/")}  # drop entries of older files
    except (OSError, ValueError, TypeError, KeyError):
        stored = {}
    mean, std = channel_stats(images)
    stored[entry] = {"mean": mean, "std": std}
    try:
        atomic_write(path, lambda f: f.write(json.dumps(stored, indent=1).encode()))
    except OSError:
        pass  # a read-only data folder: the stats are recomputed next time, which is all a cache miss costs
    return mean, std


# ---------------------------------------------------------------------------------------------- imagefolder


def _list_split(folder: Path, extensions) -> tuple[list[str], list[str], list[int]]:
    """torchvision.datasets.ImageFolder order: sorted class folders, then os.walk'd sorted file names."""
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(f"{folder} has no class folders; expected {folder}/<class>/<image files>")
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        count = len(paths)
        paths += list_images(os.path.join(folder, name), extensions)
        if len(paths) == count:
            raise UserError(f"class folder {folder / name} has no images; add some or remove the folder")
        labels += [label] * (len(paths) - count)
    return classes, paths, labels


def _check_imagefolder(path: Path) -> None:
    if not (path / "train").is_dir() or not (path / "test").is_dir():
        raise UserError(f"imagefolder:{path} needs {path}/train/<class>/* and {path}/test/<class>/* "
                        f"(and optionally val/)")


def _load_imagefolder(path: Path, cache_dir: Path, image_size):
    extensions = image_extensions()
    listing = {s: _list_split(path / s, extensions) for s in ("train", "val", "test") if (path / s).is_dir()}
    classes = listing["train"][0]
    for split, (split_classes, _, _) in listing.items():
        if split_classes != classes:
            diff = sorted(set(classes) ^ set(split_classes))
            raise UserError(f"{path / split} has classes that differ from {path / 'train'} ({', '.join(diff)}); "
                            f"the splits must share class folders")

    all_paths = [p for _, paths, _ in listing.values() for p in paths]
    key = _fingerprint(path, all_paths)
    key = hashlib.sha256(f"{key}/{image_size}".encode()).hexdigest()[:16]
    prefix = f"imagefolder-{path.resolve().name}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"

    def decode_all():
        splits, size = {}, None
        for split, (_, paths, labels) in listing.items():
            images, size = _decode_images(paths, image_size, size)
            splits[split] = Split(torch.from_numpy(images).permute(0, 3, 1, 2), torch.tensor(labels))
        return splits

    return _decoded(cache_dir, prefix, key, classes, decode_all), classes, key, prefix


def _decode_hub(hub, image_size) -> dict:
    splits, size = {}, None
    for role, (images, labels) in hub.splits.items():
        decoded, size = _decode_images(images(), image_size, size)
        splits[role] = Split(torch.from_numpy(decoded).permute(0, 3, 1, 2), torch.tensor(labels))
    return splits


def _decoded(cache_dir: Path, prefix: str, key: str, classes: list[str], decode_all) -> dict:
    """{split: Split} from `<cache_dir>/<prefix>-<key>.pt` when it holds these classes, else decode_all()'s, written
    there (and the earlier decodes of `prefix` removed: stale). A cache that cannot be written only warns."""
    cache_file = cache_dir / f"{prefix}-{key}.pt"
    if cache_file.is_file():
        try:
            cached = torch.load(cache_file, weights_only=True)
            if cached["classes"] == classes:
                return {s: Split(*v) for s, v in cached.items() if s != "classes"}
        except Exception:  # a cache from another version, or damaged: decode again
            pass
    splits = decode_all()
    payload = {"classes": classes, **{s: (sp.images, sp.labels) for s, sp in splits.items()}}
    try:
        atomic_write(cache_file, lambda f: torch.save(payload, f))
        for old in cache_dir.glob(f"{prefix}-*.pt"):
            if old != cache_file:
                old.unlink(missing_ok=True)
    except OSError as e:
        warnings.warn(f"cannot cache decoded images in {cache_dir} ({e}); set data.root to a writable folder",
                      stacklevel=3)
    return splits


def _decode_chunk(paths, image_size):
    """Decode files into one uint8 N x H x W x 3 array; on a bad file return (path, reason) instead."""
    out, first = None, None
    for i, path in enumerate(paths):
        try:
            arr = decode(path, image_size)
        except IMAGE_ERRORS as e:
            return None, (str(path), f"cannot be read as an image ({e})")
        if out is None:
            out, first = np.empty((len(paths), *arr.shape), np.uint8), path
        elif arr.shape != out.shape[1:]:
            return None, (str(path), f"is {arr.shape[1]}x{arr.shape[0]} but {first} is {out.shape[2]}x{out.shape[1]}")
        out[i] = arr
    return out, None


def _decode_images(paths, image_size, size=None, workers=None):
    """Decode all `paths` (a process pool for large sets: PIL decoding is CPU-bound Python). `size` = (H, W) to
    match."""
    if workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        workers = min(cores or 1, 8) if len(paths) >= POOL_MIN_IMAGES else 1
    if workers > 1 and "fork" in get_all_start_methods():
        per = math.ceil(len(paths) / (workers * 4))  # a few chunks per worker evens out uneven files
        chunks = [paths[i : i + per] for i in range(0, len(paths), per)]
        # fork, as torch's DataLoader workers: spawn would re-run the caller's script and re-import torch per worker;
        # the children only run PIL and numpy
        with warnings.catch_warnings(), ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            # 3.12+: "process is multi-threaded, fork() may deadlock"
            warnings.simplefilter("ignore", DeprecationWarning)
            results = list(pool.map(_decode_chunk, chunks, [image_size] * len(chunks)))
    else:
        chunks, results = [paths], [_decode_chunk(paths, image_size)]
    for chunk, (arr, error) in zip(chunks, results, strict=True):
        if error:
            bad, reason = error
            fix = "; set data.image_size to resize all images" if reason.startswith("is ") else ""
            raise UserError(f"{bad} {reason}{fix}")
        if size is not None and arr.shape[1:3] != size:
            raise UserError(
                f"{chunk[0]} is {arr.shape[2]}x{arr.shape[1]} but earlier images are {size[1]}x{size[0]}; "
                f"set data.image_size to resize all images"
            )
        size = arr.shape[1:3]
    images = results[0][0] if len(results) == 1 else np.concatenate([arr for arr, _ in results])
    return images, size


# ---------------------------------------------------------------------------------------------- synthetic

SYNTHETIC_CLASSES = 10


def _synthetic(n: int, stream: int, size: int) -> Split:
    """Deterministic images whose class sets a smooth colour pattern (shared by train and test) under pixel noise."""
    protos = torch.rand(SYNTHETIC_CLASSES, 3, 4, 4, generator=torch.Generator().manual_seed(1234))
    protos = torch.nn.functional.interpolate(protos, size=(size, size), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(stream)
    labels = torch.randperm(n, generator=g) % SYNTHETIC_CLASSES  # balanced classes
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for start in range(0, n, 1024):
        y = labels[start : start + 1024]
        noise = torch.randn(len(y), 3, size, size, generator=g)
        images[start : start + 1024] = (48 + 160 * protos[y] + 40 * noise).clamp(0, 255).to(torch.uint8)
    return Split(images, labels)


