"""Every setting of TrainConfig by its dotted name, and its default as --help prints it."""
import dataclasses
import typing

import yaml

from resnet_lite.config import TrainConfig, to_dict


def settings(cls=TrainConfig, prefix=""):
    """(dotted name, dataclass field) of every setting, nested configs expanded."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from settings(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f


def default_text(path):
    """The default of setting `path` as YAML flow text: what --help shows after its type."""
    value = to_dict(TrainConfig())
    for part in path.split("."):
        value = value[part]
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()
