"""Image files: which files count as images and how one becomes pixels. Training on an image folder
(resnet_lite.data, with data.image_size) and prediction on image files (resnet_lite.predict) both read through
decode(), so a model sees the same pixels in both: the shorter side resized and the centre cut out, as timm's eval
transform does. An image over PIL's Image.MAX_IMAGE_PIXELS (89 MP) is refused, not decoded."""
import math
import os
import warnings

import numpy as np
import torch
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


def decode(path, size: int | None = None, crop_pct: float = 1.0) -> np.ndarray:
    """uint8 H x W x 3 RGB pixels of an image file (a path, or a binary file object: a dataset's encoded bytes); with
    `size`, size x size as timm's eval transform makes them
    (resolve_data_config + create_transform: torchvision's Resize of the shorter side to floor(size / crop_pct) with
    PIL's bilinear filter, then CenterCrop(size)), so the aspect ratio is kept, never squashed. Raises one of
    IMAGE_ERRORS when the file cannot be read as an image, DecompressionBombError when it has more pixels than
    Image.MAX_IMAGE_PIXELS."""
    # PIL only warns from MAX_IMAGE_PIXELS to twice that, and decodes: up to 0.5 GB of RGB per image, in each worker
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if size:
                    img = _resize_center_crop(img, size, crop_pct)
                return np.asarray(img)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise Image.DecompressionBombError(f"{str(e).rstrip('.')}; shrink the image or remove it") from None


def _resize_center_crop(img: Image.Image, size: int, crop_pct: float) -> Image.Image:
    scale = math.floor(size / crop_pct)
    w, h = img.size
    long = int(scale * max(w, h) / min(w, h))  # torchvision's rounding of the longer side
    new = (scale, long) if w <= h else (long, scale)
    if new != img.size:
        # Pillow sets its filter constants in a loop from its Resampling enum; its type hints do not declare them
        img = img.resize(new, Image.BILINEAR)  # type: ignore[attr-defined]
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    return img.crop((left, top, left + size, top + size)) if (new[0], new[1]) != (size, size) else img


# ---------------------------------------------------------------------------------------------- normalising


def _scale_shift(mean, std):
    mean = torch.as_tensor(mean, dtype=torch.float64).flatten()
    std = torch.as_tensor(std, dtype=torch.float64).flatten()
    if mean.shape != std.shape or (std <= 0).any():
        raise ValueError(f"mean and std need one value per channel and std > 0, got {mean.tolist()}, {std.tolist()}")
    # (x / 255 - mean) / std as one multiply-add on the 0..255 scale
    scale = (1.0 / (255.0 * std)).float().view(1, -1, 1, 1)
    shift = (-mean / std).float().view(1, -1, 1, 1)
    return scale, shift


def _on_device(tensors):
    """A per-device cache of small constant tensors, so a CUDA batch pays no host-to-device copy per call."""
    cache = {}

    def get(device):
        if device not in cache:
            cache[device] = [t.to(device) for t in tensors]
        return cache[device]

    return get


def _check_batch(images, channels):
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != channels:
        raise ValueError(f"expected a uint8 N x {channels} x H x W batch, got {images.dtype} {tuple(images.shape)}")


def build_normalize(mean, std):
    """The eval path: uint8 N x C x H x W -> (x / 255 - mean) / std as float32, mean/std on the 0..1 scale."""
    constants = _on_device(_scale_shift(mean, std))

    def normalize(images):
        _check_batch(images, constants("cpu")[0].shape[1])
        scale, shift = constants(images.device)
        return images.float().mul_(scale).add_(shift)

    return normalize
