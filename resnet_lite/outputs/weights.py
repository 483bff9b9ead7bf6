"""Weights files: safetensors of a model's state_dict with metadata (model, num_classes, in_chans, image_size, classes,
mean, std), enough for evaluate/predict/export to rebuild the model and its preprocessing.

    save_weights(model.state_dict(), "runs/m5/model_last.safetensors", {"model": "lite_r4b2", ...})
    state_dict, meta = load_weights("runs/m5/model_last.safetensors")
"""
import json

import safetensors.torch

from ..errors import UserError
from .files import atomic_write
from pathlib import Path

__all__ = ["save_weights", "load_weights"]


def save_weights(state_dict: dict, path, metadata: dict) -> Path:
    """safetensors file of `state_dict` (moved to CPU); metadata values that are not strings are stored as JSON."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    data = safetensors.torch.save(tensors, metadata=meta)
    return atomic_write(path, lambda f: f.write(data))


def load_weights(path, device="cpu") -> tuple[dict, dict]:
    """(state_dict, metadata) of a weights file written by save_weights; JSON metadata values decoded."""
    try:
        with safetensors.safe_open(str(path), framework="pt", device=str(device)) as f:
            raw = f.metadata() or {}
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise UserError(f"weights file {path} does not exist") from None
    except Exception as e:
        raise UserError(f"cannot read {path} as safetensors weights ({e})") from None
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    return state_dict, meta
