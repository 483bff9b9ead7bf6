"""Data files that ship with the package, found wherever `resnet_lite` is imported from.

The repository keeps them in top-level folders (`configs/`: the presets; `launch/`: the launch recipes). A wheel lays
each one out inside the package (`configs/` becomes `resnet_lite/configs`, `launch/` becomes
`resnet_lite/launch_recipes` beside the module launch.py: pyproject.toml's package-dir). A checkout's source folder
`resnet_lite/` has no such subfolder, and `python -m resnet_lite.train` run from the checkout imports that source
folder first (python -m puts the working directory first on sys.path), so there the folder beside it is used: the
files always come from the same tree as the code.
"""
import importlib.resources
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["shipped"]

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT_NAMES = {"launch_recipes": "launch"}  # package folder -> the checkout's, where pyproject.toml renames it


def shipped(folder: str) -> Traversable:
    """The shipped folder `folder` ('configs', 'launch_recipes'): inside the installed package, else its top-level
    folder beside a checkout's source folder."""
    for candidate in (_PACKAGE / folder, _PACKAGE.parent / _CHECKOUT_NAMES.get(folder, folder)):
        if candidate.is_dir() and (candidate.parent == _PACKAGE or (_PACKAGE.parent / "pyproject.toml").is_file()):
            return candidate
    try:  # an importer that is not a plain folder (a zip)
        return importlib.resources.files(f"{__package__}.{folder}")
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"resnet_lite's {folder}/ is missing from {_PACKAGE}; "
                                  f"reinstall resnet_lite") from None
