"""What a run keeps on disk: resumable checkpoints and self-describing weights, written atomically.

A checkpoint is a plain dict of tensors and plain data (nanoGPT style), loadable with torch.load(weights_only=True):

    model, optimizer, scheduler, scaler      state_dicts (scaler None without fp16)
    epoch                                    epochs completed
    batch                                    optimizer steps done in epoch `epoch` (0 at an epoch boundary): the data
                                             order is a function of (seed, epoch), so resuming skips this many batches
    step                                     optimizer steps since the start of the run
    config                                   the resolved TrainConfig as a dict
    rng                                      {"torch": ByteTensor, "cuda": [ByteTensor per device]} of the main process
    train_loss_sum, train_images             the partial epoch's running train loss, so its metrics stay whole
    best                                     {"acc": float, "epoch": int} so far
    elapsed, world_size, wandb_id            seconds trained so far, processes, the W&B run to continue

Files are `checkpoints/step-00001234.pt`; a new one is complete (temp file, fsync, rename) before old ones are pruned.
Weights are safetensors of the plain model's state_dict with metadata (model, num_classes, in_chans, image_size,
classes, mean, std), enough for evaluate/predict/export to rebuild the model and its preprocessing.
"""
import json
import os
import re
import tempfile
from pathlib import Path

import safetensors.torch
import torch

from .errors import UserError

__all__ = ["atomic_write", "save_checkpoint", "load_checkpoint", "list_checkpoints", "find_checkpoint",
           "save_weights", "load_weights", "rng_state", "set_rng_state", "CHECKPOINT_DIR"]

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d+)\.pt$")
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path, write, mode="wb") -> Path:
    """Call write(file) on a temporary file beside `path`, flush and fsync it, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; the result should read like any file the user writes
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some file systems cannot fsync a directory
    return path


def list_checkpoints(directory) -> list[Path]:
    """Checkpoint files in `directory`, oldest (lowest step) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict, directory, keep: int) -> Path:
    """Write `state` as step-<step>.pt, then delete all but the newest `keep` checkpoints."""
    path = atomic_write(Path(directory) / f"step-{state['step']:08d}.pt", lambda f: torch.save(state, f))
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def find_checkpoint(path) -> Path | None:
    """The checkpoint `path` names: a checkpoint file, or the newest one in a run directory (or its checkpoints/)."""
    path = Path(path)
    if path.is_file():
        return path
    for directory in (path / CHECKPOINT_DIR, path):
        if found := list_checkpoints(directory):
            return found[-1]
    return None


def load_checkpoint(path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # truncated or not a checkpoint
        raise UserError(f"cannot read checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                        f"resume from an earlier one in {Path(path).parent}") from None


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


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
