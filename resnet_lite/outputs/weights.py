"""Weights files, the one place they are read and written.

A run's own: safetensors of a model's state_dict with metadata (model, num_classes, in_chans, image_size, classes,
mean, std), enough for evaluate/predict/export to rebuild the model and its preprocessing. Others' (fine-tuning's
starting weights): safetensors or torch files, read as timm's load_state_dict reads them (a `state_dict`/`model` entry
of a checkpoint, its EMA first; DDP/torch.compile prefixes removed), but torch files always with weights_only=True,
whatever the installed torch's or timm's default: a pickle that asks for more than tensors is refused, never run.

    save_weights(model.state_dict(), "runs/m5/model_last.safetensors", {"model": "lite_r4b2", ...})
    state_dict, meta = load_weights("runs/m5/model_last.safetensors")
    state_dict = read_state_dict("best_model.pth")      # the report's notebook's, a timm checkpoint, a plain state_dict
"""
import argparse
import json
import re
from pathlib import Path

import safetensors.torch
import torch

from ..errors import UserError, first_line
from .files import atomic_write

__all__ = ["save_weights", "load_weights", "read_state_dict"]


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


_ENTRIES = ("state_dict_ema", "model_ema", "state_dict", "model")  # timm's load_state_dict order: the EMA first
_WRAPPERS = ("_orig_mod.", "module.", "_orig_mod.")  # timm's clean_state_dict: torch.compile and DDP, in either order



def read_state_dict(path: Path) -> dict:
    """The tensors of a weights file, unwrapped as timm's load_state_dict does; a UserError when it cannot be read as
    one, or when it is a pickle that asks for more than tensors and plain data."""
    checkpoint: object  # a pickle may hold anything: checked below
    try:
        if str(path).endswith(".safetensors"):
            checkpoint = safetensors.torch.load_file(str(path), device="cpu")
        else:
            checkpoint = _torch_load(path)
    except Exception as e:  # not a weights file, truncated, pickled objects weights_only refuses
        refused = re.search(r"(?:GLOBAL|class) ([\w.]+)", str(e)) if "Weights only load failed" in str(e) else None
        if refused:
            raise UserError(f"{path} is not plain weights: it asks to load {refused[1]}, which could run code; give a "
                            f".safetensors or .pth state_dict") from None
        reason = first_line(e)
        raise UserError(f"cannot read weights from {path} ({type(e).__name__}: {reason}); give a .safetensors or "
                        f".pth state_dict") from None
    if isinstance(checkpoint, dict):
        key = next((k for k in _ENTRIES if checkpoint.get(k) is not None), None)
        checkpoint = checkpoint[key] if key else checkpoint
    if not isinstance(checkpoint, dict) or not all(torch.is_tensor(v) for v in checkpoint.values()):
        raise UserError(f"{path} holds no state_dict of tensors; give a .safetensors or .pth state_dict")
    state_dict = {}
    for key, tensor in checkpoint.items():
        for prefix in _WRAPPERS:
            key = key.removeprefix(prefix)
        state_dict[key] = tensor
    return state_dict


def _torch_load(path: Path):
    if hasattr(torch.serialization, "safe_globals"):  # torch 2.5+; timm's training checkpoints keep their args in one
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True)
