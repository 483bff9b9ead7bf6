"""Data files that ship with the package, found wherever `resnet_lite` is imported from.

The repository keeps them in top-level folders (`configs/`: the presets). A wheel and an editable install lay each
one out as a subpackage (`configs/` becomes `resnet_lite.configs`, pyproject.toml's package-dir); the source folder
`resnet_lite/` of a checkout has no such subpackage, and `python -m resnet_lite.train` run from the checkout imports
the source folder first (python -m puts the working directory first on sys.path), so there the folder beside it is
used instead.
"""
import importlib.resources
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["shipped"]

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def shipped(folder: str) -> Traversable:
    """The shipped folder `folder` ('configs'): resnet_lite.<folder> when installed, else <checkout>/<folder>."""
    try:
        return importlib.resources.files(f"{__package__}.{folder}")
    except ModuleNotFoundError:
        source = _SOURCE_ROOT / folder
        if source.is_dir():
            return source
        raise ModuleNotFoundError(f"resnet_lite's {folder}/ is missing: neither resnet_lite.{folder} (installed) "
                                  f"nor {source} (a checkout) exists; reinstall with `pip install resnet_lite`") from None
