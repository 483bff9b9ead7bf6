"""Datasets in the Hugging Face Hub's format, read with the `datasets` library (pip install 'resnet_lite[hf]'), imported
only when a spec asks for one:

    ds = load_dataset("hf:uoft-cs/cifar10")              # resnet_lite.data.load_dataset: hf:NAME or hf:NAME:CONFIG
    hub = open_hub("hf:./my_parquet_folder")             # what resnet_lite.data.sources decodes and caches

NAME is whatever datasets.load_dataset takes: a Hub name (downloaded once into the datasets library's own cache, then
read offline), or a local folder or file: parquet or arrow files (train-*.parquet, test-*.parquet, ...), a folder
written by save_to_disk, an image folder. The splits: `train`; `test`, else `validation` or `valid` as the test split;
`validation` or `valid` beside a `test` as the held-out split (val). The columns: data.image_column, else `img` or
`image`; data.label_column, else `label` or `fine_label` (CIFAR-100's). The classes: the label column's ClassLabel
names, else its distinct values in sorted order. Each image is decoded as an image file is (resnet_lite.data.images:
data.image_size resizes the shorter side and cuts out the centre), once: resnet_lite.data.sources caches the uint8
tensors in data.root under the dataset's fingerprint (its files, or its Hub revision), as it does an image folder's.
"""
import hashlib
import io
import re
from dataclasses import dataclass, field

from ..errors import UserError, did_you_mean, first_line

__all__ = ["IMAGE_COLUMNS", "LABEL_COLUMNS", "HubData", "open_hub"]

IMAGE_COLUMNS = ("img", "image")
LABEL_COLUMNS = ("label", "fine_label")
TEST_SPLITS = ("test", "validation", "valid")  # the first present is the test split
VAL_SPLITS = ("validation", "valid")  # beside a test split: the held-out one


class Record(io.BytesIO):
    """An image's encoded bytes, named for error messages (`hf:NAME train[17]`); picklable for the decoding pool."""

    def __init__(self, data: bytes, where: str):
        super().__init__(data)
        self.where = where

    def __str__(self):
        return self.where

    def __reduce__(self):
        return Record, (self.getvalue(), self.where)


@dataclass
class HubData:
    name: str  # the dataset's short name (the last part of NAME, and the config)
    classes: list[str]
    fingerprint: str  # of the splits used and the columns: what the decoded cache is keyed by
    prefix: str  # of the cache files: hf-<name>-<hash of the spec>
    splits: dict = field(default_factory=dict)  # "train" | "test" | "val" -> (callable giving the images, labels)


def parse_spec(spec: str) -> tuple[str, str | None]:
    name, _, config = spec.removeprefix("hf:").partition(":")
    if not name:
        raise UserError(f"--data {spec} names no dataset; write hf:NAME or hf:NAME:CONFIG, e.g. hf:uoft-cs/cifar10")
    return name, config or None


def _load(spec: str):
    try:
        import datasets
    except ImportError:
        raise UserError(f"--data {spec} needs the datasets package: pip install 'resnet_lite[hf]'") from None
    name, config = parse_spec(spec)
    try:
        return datasets.load_dataset(name, config)
    except Exception as e:  # the library's own message says what was wrong: a name, a config, the network
        offline = " (the Hub cannot be reached: load it once online, then it is cached)" if isinstance(
            e, ConnectionError) else ""
        raise UserError(f"--data {spec}: datasets.load_dataset({name!r}{f', {config!r}' if config else ''}) failed: "
                        f"{first_line(e, 300)}{offline}; check the name, or give a local folder of parquet/arrow "
                        f"files") from None


def _column(spec: str, split, setting: str, given: str | None, defaults) -> str:
    columns = list(split.column_names)
    if given is not None:
        if given in columns:
            return given
        hint = did_you_mean(given, columns)
        raise UserError(f"--data {spec} has no column {given!r} ({hint + ' ' if hint else ''}columns: "
                        f"{', '.join(columns)}); set data.{setting} to one of them")
    found = next((c for c in defaults if c in columns), None)
    if found is None:
        raise UserError(f"--data {spec} has none of the columns {', '.join(defaults)} (columns: {', '.join(columns)}); "
                        f"set data.{setting} to the one that holds them")
    return found


def _classes(spec: str, feature, labels: list):
    """(class names, value -> 0-based class number) of a label column over every split used."""
    names = getattr(feature, "names", None)
    if names is None:  # plain values: numbered in sorted order
        values = sorted(set(labels))
        return [str(v) for v in values], {v: i for i, v in enumerate(values)}.__getitem__
    if any(label < 0 or label >= len(names) for label in labels):
        raise UserError(f"--data {spec} has unlabelled images (label -1) in a split it trains or tests on; choose "
                        f"a dataset or config whose train and test splits are labelled")
    return list(names), int


def open_hub(spec: str, image_column: str | None = None, label_column: str | None = None) -> HubData:
    """The dataset `spec` names, its splits' labels, and for each split a callable giving its images as decodable
    Records (or file paths); nothing is decoded here."""
    from datasets import Image

    dataset = _load(spec)
    names = list(dataset)
    test = next((s for s in TEST_SPLITS if s in names), None)
    if "train" not in names or test is None:
        raise UserError(f"--data {spec} has the splits {', '.join(names)}; it needs train and test (or validation)")
    chosen = {"train": "train", "test": test}
    if test == "test" and (val := next((s for s in VAL_SPLITS if s in names), None)):
        chosen["val"] = val
    first = dataset["train"]
    image = _column(spec, first, "image_column", image_column, IMAGE_COLUMNS)
    label = _column(spec, first, "label_column", label_column, LABEL_COLUMNS)
    labels = {role: dataset[split][label] for role, split in chosen.items()}
    classes, number = _classes(spec, first.features[label], [v for values in labels.values() for v in values])

    def images(split: str):
        def get():
            rows = dataset[split].cast_column(image, Image(decode=False))[image]  # the files' bytes, undecoded
            return [Record(r["bytes"], f"{spec} {split}[{i}]") if r["bytes"] else r["path"] for i, r in enumerate(rows)]
        return get

    splits = {role: (images(split), [number(v) for v in labels[role]]) for role, split in chosen.items()}
    name, config = parse_spec(spec)
    parts = [image, label, *(f"{role}={split}:{dataset[split]._fingerprint}" for role, split in chosen.items())]
    fingerprint = hashlib.sha256("/".join(parts).encode()).hexdigest()[:16]
    short = re.sub(r"[^\w.-]", "_", name.rstrip("/").rsplit("/", 1)[-1] + (f"-{config}" if config else ""))
    prefix = f"hf-{short}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"
    return HubData(short, classes, fingerprint, prefix, splits)
