"""Checkpoint files: written whole or not at all, pruned, found again, read back (what one holds:
resnet_lite.training.state).

Files are `checkpoints/step-00001234.pt`. A new one is complete (temp file, fsync, rename, fsync of the folder) before
any other is removed; then the folder keeps the newest `keep` and the best one, and drops those of a later step (left
by a run that was resumed from an earlier checkpoint, or unreadable) and temporary files of interrupted writes.
`resumable_checkpoint` skips an unreadable newest checkpoint, with a warning, for the one before it.
Weights are safetensors of the plain model's state_dict with metadata (model, num_classes, in_chans, image_size,
classes, mean, std), enough for evaluate/predict/export to rebuild the model and its preprocessing.
"""
import io
import re
from pathlib import Path

import torch

from ..errors import UserError, first_line
from ..hooks import crash_point
from ..training.state import REQUIRED
from .files import atomic_write
from .rundir import CHECKPOINTS

__all__ = ["save_checkpoint", "load_checkpoint", "list_checkpoints", "find_checkpoint", "resumable_checkpoint"]

_NAME = re.compile(r"^step-(\d+)\.pt$")


def list_checkpoints(directory) -> list[Path]:
    """Checkpoint files in `directory`, oldest (lowest step) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _step(path: Path) -> int:
    match = _NAME.match(path.name)
    assert match is not None, path  # called on list_checkpoints()' files, which all match
    return int(match.group(1))


def save_checkpoint(state: dict, directory, keep: int, best_step: int | None = None) -> Path:
    """Write `state` as step-<step>.pt; once it is complete keep the newest `keep` checkpoints up to it and the one of
    step `best_step`, and remove later ones (an abandoned continuation) and leftovers of interrupted writes."""
    directory, step = Path(directory), state["step"]
    buffer = io.BytesIO()
    torch.save(state, buffer)  # serialised first: a full disk then fails in our write, as an OSError
    data = buffer.getbuffer()

    def write(f):
        f.write(data)
        crash_point("save", step)

    path = atomic_write(directory / f"step-{step:08d}.pt", write)
    kept = [p for p in list_checkpoints(directory) if _step(p) <= step]
    for old in kept[:-keep]:
        if _step(old) != best_step:
            old.unlink(missing_ok=True)
    for later in list_checkpoints(directory):
        if _step(later) > step:
            later.unlink(missing_ok=True)
    for tmp in directory.glob(".step-*.tmp"):
        tmp.unlink(missing_ok=True)  # only the main process writes here, and its own write has been renamed
    crash_point("saved", step)
    return path


def find_checkpoint(path) -> Path | None:
    """The checkpoint `path` names: a checkpoint file, or the newest one in a run directory (or its checkpoints/)."""
    path = Path(path)
    if path.is_file():
        return path
    for directory in (path / CHECKPOINTS, path):
        if found := list_checkpoints(directory):
            return found[-1]
    return None


def load_checkpoint(path) -> dict:
    """The checkpoint at `path` (tensors and plain data only: weights_only=True), or a UserError saying why not."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # truncated, or not a checkpoint
        reason = first_line(e)
        raise UserError(f"cannot read checkpoint {path} ({type(e).__name__}: {reason}); "
                        f"resume from an earlier one in {Path(path).parent}") from None
    missing = [k for k in REQUIRED if k not in state] if isinstance(state, dict) else list(REQUIRED)
    if missing:
        raise UserError(f"{path} is not a resnet_lite checkpoint (no {', '.join(missing)}); "
                        f"give a checkpoints/step-*.pt file of a run")
    return state


def resumable_checkpoint(path, warn=print) -> tuple[Path, dict] | None:
    """(file, state) of the checkpoint to resume from: the file `path`, or the newest readable one in the run directory
    `path` (or its checkpoints/), calling warn(message) for each newer one that cannot be read. None: no checkpoints."""
    path = Path(path)
    if path.is_file():
        return path, load_checkpoint(path)
    found = list_checkpoints(path / CHECKPOINTS) or list_checkpoints(path)
    errors = []
    for candidate in reversed(found):
        try:
            state = load_checkpoint(candidate)
        except UserError as e:
            errors.append(str(e))
            continue
        for error in errors:
            warn(f"warning: {error.split('; ')[0]}; using {candidate.name}, the newest readable one")
        return candidate, state
    if found:
        raise UserError(f"no checkpoint in {found[0].parent} can be read (newest: {errors[0].split('; ')[0]}); "
                        f"start the run again in another --output-dir")
    return None


