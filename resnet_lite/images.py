"""Image files: which files count as images and how one becomes pixels. Training on an image folder
(resnet_lite.data) and prediction on image files (resnet_lite.predict) both read through here, so a model sees
the same pixels in both."""
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_ERRORS", "image_extensions", "list_images", "decode"]

IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)  # what decode() may raise


def image_extensions() -> set[str]:
    """Lower-case extensions ('.jpg', ...) of every format PIL can open."""
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def list_images(folder, extensions=None) -> list[str]:
    """Image files under `folder`, as torchvision's ImageFolder orders them: os.walk in sorted order (links followed),
    sorted names, hidden files skipped."""
    extensions = extensions or image_extensions()
    return [os.path.join(parent, name) for parent, _, names in sorted(os.walk(folder, followlinks=True))
            for name in sorted(names) if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions]


def decode(path: str | Path, size: int | None = None) -> np.ndarray:
    """uint8 H x W x 3 RGB pixels of an image file, resized to size x size with PIL's bilinear filter when `size` is
    given (and differs). Raises one of IMAGE_ERRORS when the file cannot be read as an image."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if size and img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img)
