"""CIFAR-10/100 in the official layouts: download, verify, extract, parse. Used by resnet_lite.data.

The binary version (`cifar-10-batches-bin`, `cifar-100-binary`) is what gets downloaded: fixed-size
records of label byte(s) + 3072 pixel bytes (R plane, G plane, B plane, rows of 32), parsed with
numpy.frombuffer. The Python version (`cifar-10-batches-py`, `cifar-100-python`) is read when a copy is
already there, by an unpickler that builds only what the official files hold (dicts, lists, strings, numpy arrays):
a pickle that asks for anything else, such as os.system, is refused before it runs.
Layout and checksums: https://www.cs.toronto.edu/~kriz/cifar.html
"""
import contextlib
import fcntl
import hashlib
import io
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class Layout:
    folder: str
    train: tuple[tuple[str, str], ...]  # (file name, official md5)
    test: tuple[tuple[str, str], ...]
    meta: str  # class names: a text file (binary layout) or a pickle (python layout)
    meta_md5: str | None
    binary: bool
    label_bytes: int = 1  # binary CIFAR-100 records start with (coarse, fine)


@dataclass(frozen=True)
class Source:
    url: str
    md5: str  # of the archive at `url`
    layouts: tuple[Layout, ...]  # the first is what the archive contains; the rest are read if present

    @property
    def filename(self):
        return self.url.rsplit("/", 1)[-1]


# Archive md5s: the CIFAR page. The -py per-file md5s: torchvision/datasets/cifar.py. The -bin per-file md5s
# are not published by the authors; these are the ones other projects check (CIFAR-10: Caffe2's CMake
# download script and rai-project/dldataset agree; CIFAR-100: rai-project/dldataset only).
SOURCES = {
    "cifar10": Source(
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "c32a1d4ab5d03f1284b67883e8d87530",
        (
            Layout(
                "cifar-10-batches-bin",
                train=(
                    ("data_batch_1.bin", "5dd7e06a14cb22eb9f671a540d1b7c25"),
                    ("data_batch_2.bin", "5ea93a67294ea407fff1d09f752e9692"),
                    ("data_batch_3.bin", "942cd6a4bcdd0dd3c604fbe906cb4421"),
                    ("data_batch_4.bin", "ae636b3ba5c66a11e91e8cb52e771fcb"),
                    ("data_batch_5.bin", "53f37980c15c3d472c316c40844f3f0d"),
                ),
                test=(("test_batch.bin", "803d5f7f4d78ea53de84dbe85f74fb6d"),),
                meta="batches.meta.txt",
                meta_md5=None,
                binary=True,
            ),
            Layout(
                "cifar-10-batches-py",
                train=(
                    ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                    ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                    ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                    ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                    ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
                ),
                test=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
                meta="batches.meta",
                meta_md5="5ff9c542aee3614f3951f8cda6e48888",
                binary=False,
            ),
        ),
    ),
    "cifar100": Source(
        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        "03b5dce01913d631647c71ecec9e9cb8",
        (
            Layout(
                "cifar-100-binary",
                train=(("train.bin", "6172c7755cfe09b2fe270c85cebc1b15"),),
                test=(("test.bin", "4499cfba6c016c1be1438163640a0898"),),
                meta="fine_label_names.txt",
                meta_md5=None,
                binary=True,
                label_bytes=2,
            ),
            Layout(
                "cifar-100-python",
                train=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
                test=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
                meta="meta",
                meta_md5="7973b15100ade9c7d40fb424638fde48",
                binary=False,
            ),
        ),
    ),
}


LOCK = ".cifar.lock"  # in the data root: one CIFAR download there at a time, whichever dataset and process


def find_or_download(name, root: Path, download: bool) -> tuple[Layout, Path]:
    """The extracted folder of CIFAR `name` under `root`, downloading the official archive if absent. One process
    downloads; others that ask meanwhile wait for it, then use its folder."""
    source = SOURCES[name]
    found = _find(source, root)
    if found:
        return found
    layout = source.layouts[0]
    expected = root / layout.folder
    if not download:
        raise UserError(
            f"{name} not found at {expected} (nor {root / source.layouts[1].folder}) and data.download=false; "
            f"allow the download, or use --data imagefolder:PATH"
        )
    with _download_lock(root):
        found = _find(source, root)  # downloaded by another process while this one waited
        if found:
            return found
        _remove_partial_downloads(root)
        _download_and_extract(source, layout, root)
    return layout, expected


def _find(source: Source, root: Path) -> tuple[Layout, Path] | None:
    for layout in source.layouts:
        if (root / layout.folder).is_dir():
            return layout, root / layout.folder
    return None


@contextlib.contextmanager
def _download_lock(root: Path):
    """Hold the exclusive lock on CIFAR downloads into `root`: fcntl.flock on root/LOCK, which the kernel releases if
    this process dies. The holder removes the file as it lets go, so a waiter that then gets the lock of a removed file
    takes the new one instead: at most one holder at a time, and no lock file left behind."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"resnet_lite: waiting for another process's download into {root}", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.path.samestat(os.stat(root / LOCK), os.fstat(fd)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
    except OSError as e:
        raise UserError(f"cannot download into {root} ({e.strerror}); set --data-dir (data.root) to a writable "
                        "folder") from None
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root / LOCK)
        os.close(fd)


def _remove_partial_downloads(root: Path) -> None:
    """Delete what a download killed outright (SIGKILL, a lost node) left in `root`: its archive's .part file and its
    .extract-* folder. Only called under _download_lock, so no live download's files are touched."""
    for source in SOURCES.values():
        for part in root.glob(f".{source.filename}.*.part"):
            part.unlink(missing_ok=True)
    for folder in root.glob(".extract-*"):
        shutil.rmtree(folder, ignore_errors=True)


def _download_and_extract(source: Source, layout: Layout, root: Path):
    try:
        fd, archive = tempfile.mkstemp(dir=root, prefix=f".{source.filename}.", suffix=".part")
    except OSError as e:
        raise UserError(f"cannot download into {root} ({e.strerror}); "
                        f"set --data-dir (data.root) to a writable folder") from None
    print(f"resnet_lite: downloading {source.url} to {root} (once)", file=sys.stderr)
    extract_dir = None
    try:
        md5 = hashlib.md5()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(source.url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    md5.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(
                f"cannot download {source.url} ({reason}); put the extracted {layout.folder} at "
                f"{root / layout.folder}, or use your own images with --data imagefolder:PATH"
            ) from None
        if md5.hexdigest() != source.md5:
            raise UserError(
                f"downloaded {source.url} has md5 {md5.hexdigest()}, expected {source.md5} "
                f"(a broken or intercepted download); try again"
            )
        extract_dir = tempfile.mkdtemp(dir=root, prefix=".extract-")
        try:
            with tarfile.open(archive) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(extract_dir, filter="data")  # "data": no absolute paths, links out, devices
                else:  # Python before 3.10.12 / 3.11.4
                    tar.extractall(extract_dir, members=_checked_members(tar, extract_dir))
        except tarfile.TarError as e:  # the data filter's refusals are TarErrors too
            raise UserError(f"{source.url} is not an archive that can be extracted safely ({e}); is the URL "
                            "right?") from None
        extracted = Path(extract_dir) / layout.folder
        if not extracted.is_dir():
            raise UserError(f"{source.url} does not contain {layout.folder}/; is the URL right?")
        os.replace(extracted, root / layout.folder)  # atomic: a crash never leaves a half-extracted folder
    finally:
        os.unlink(archive)
        if extract_dir:
            shutil.rmtree(extract_dir, ignore_errors=True)


def _checked_members(tar: tarfile.TarFile, target) -> list[tarfile.TarInfo]:
    """The members of `tar`, checked as tarfile's "data" filter checks them (for the Pythons that lack it): a
    tarfile.TarError for an absolute path, a path or link that leads out of `target`, a path through a symbolic link
    of the archive (which the lexical checks here cannot follow), or a device or fifo. Modes lose the setuid, setgid
    and sticky bits and the group's and others' write bits."""
    target = os.path.realpath(target)

    def outside(path) -> bool:
        return os.path.commonpath([target, os.path.realpath(os.path.join(target, path))]) != target

    members, links = tar.getmembers(), set()
    for m in members:
        parts = os.path.normpath(m.name).split(os.sep)
        through = next((link for i in range(1, len(parts) + 1) if (link := os.sep.join(parts[:i])) in links), None)
        if os.path.isabs(m.name) or outside(m.name):
            raise tarfile.TarError(f"{m.name!r} would be written outside the target folder")
        if through:
            raise tarfile.TarError(f"{m.name!r} would be written through the archive's link {through!r}")
        if m.issym() and (os.path.isabs(m.linkname) or outside(os.path.join(os.path.dirname(m.name), m.linkname))):
            raise tarfile.TarError(f"{m.name!r} links to {m.linkname!r}, outside the target folder")
        if m.islnk() and (os.path.isabs(m.linkname) or outside(m.linkname)):
            raise tarfile.TarError(f"{m.name!r} links to {m.linkname!r}, outside the target folder")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise tarfile.TarError(f"{m.name!r} is a device or fifo, not a file")
        if m.issym():
            links.add(os.sep.join(parts))
        m.mode &= 0o755
    return members


def read(layout: Layout, folder: Path):
    """(train_images, train_labels, test_images, test_labels, classes): uint8 N x 3 x 32 x 32, int64 N."""
    differ: list[str] = []  # files whose checksums differ from the published ones
    reader = _read_binary if layout.binary else _read_python
    train = reader(layout, folder, layout.train, differ)
    test = reader(layout, folder, layout.test, differ)
    classes = _read_classes(layout, folder, differ)
    for labels, (_, file_name) in ((train[1], layout.train[0]), (test[1], layout.test[0])):
        if len(labels) and labels.max() >= len(classes):
            raise UserError(f"{folder / file_name} has label {labels.max()} "
                            f"but {layout.meta} lists {len(classes)} classes")
    if differ:
        warnings.warn(
            f"{len(differ)} file(s) in {folder} differ from the official CIFAR checksums "
            f"({', '.join(differ)}); using them as they are",
            stacklevel=3,
        )
    return (*train, *test, classes)


def files(layout: Layout, folder: Path) -> list[Path]:
    return [folder / name for name, _ in layout.train + layout.test] + [folder / layout.meta]


def _read_bytes(path: Path, md5: str | None, differ: list) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} is missing; delete {path.parent} to download CIFAR again") from None
    if md5 is not None and hashlib.md5(raw).hexdigest() != md5:
        differ.append(path.name)
    return raw


def _read_binary(layout: Layout, folder: Path, names, differ):
    record = layout.label_bytes + PIXELS
    sizes = []
    for name, _ in names:
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path} is missing; delete {folder} to download CIFAR again")
        size = path.stat().st_size
        if size == 0 or size % record:
            raise UserError(
                f"{path} is truncated or not CIFAR: {size} bytes is not a whole number of {record}-byte records; "
                f"delete {folder} to download it again"
            )
        sizes.append(size // record)
    # one preallocated array, filled batch by batch: peak host memory = dataset + one batch file
    images = np.empty((sum(sizes), 3, 32, 32), np.uint8)
    labels = np.empty(sum(sizes), np.int64)
    start = 0
    for (name, md5), n in zip(names, sizes, strict=True):
        records = np.frombuffer(_read_bytes(folder / name, md5, differ), np.uint8).reshape(n, record)
        labels[start : start + n] = records[:, layout.label_bytes - 1]  # CIFAR-100: the fine label
        images[start : start + n] = records[:, layout.label_bytes :].reshape(n, 3, 32, 32)
        start += n
    return images, labels


# Every global the official -py files name: numpy arrays as Python 2's numpy pickled them, the numpy 2 spelling of
# the same, and _codecs.encode, which is how a protocol-2 pickle written by Python 3 (a re-saved copy) holds bytes.
PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class _Refused(Exception):
    pass


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in PICKLE_GLOBALS:  # the file chooses these names; they go into a one-line message
            raise _Refused("".join(c if c.isprintable() else "?" for c in f"{module}.{name}")[:120])
        return super().find_class(module, name)


def _unpickle(path: Path, md5, differ):
    # The -py layout is a Python 2 pickle and cannot be read any other way. A copy from elsewhere is untrusted: only
    # the globals of PICKLE_GLOBALS are ever loaded, so nothing in the file is executed.
    raw = _read_bytes(path, md5, differ)
    try:
        entry = _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except _Refused as e:
        raise UserError(f"{path} is not a plain CIFAR batch: it asks to load {e}; delete {path.parent} and download "
                        f"CIFAR again") from None
    except Exception as e:
        raise UserError(f"{path} is truncated or not a CIFAR batch ({type(e).__name__}); "
                        f"delete {path.parent} to download again") from None
    if not isinstance(entry, dict):
        raise UserError(f"{path} is not a CIFAR batch (a {type(entry).__name__}, not a dict)")
    return entry


def _read_python(layout: Layout, folder: Path, names, differ):
    images, labels = [], []
    for name, md5 in names:
        path = folder / name
        entry = _unpickle(path, md5, differ)
        data = np.asarray(entry.get("data"))
        label = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS or label.shape != (len(data),):
            raise UserError(
                f"{path} is not a CIFAR batch: data {data.dtype} {data.shape}, {label.size} labels "
                f"(expected uint8 N x {PIXELS} and N labels)"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(label)
    return np.concatenate(images), np.concatenate(labels)


def _read_classes(layout: Layout, folder: Path, differ) -> list[str]:
    path = folder / layout.meta
    if layout.binary:
        if not path.is_file():
            raise UserError(f"{path} is missing; delete {folder} to download CIFAR again")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    meta = _unpickle(path, layout.meta_md5, differ)
    names = meta.get("label_names", meta.get("fine_label_names"))
    if not names:
        raise UserError(f"{path} has no label_names / fine_label_names")
    return list(names)
