"""Writing files so that readers and crashes never see half of one: a temporary beside the target, renamed onto it.

    atomic_write("runs/x/summary.json", lambda f: f.write(data), mode="w")   # fsync'd, then renamed
    with staged("m5.onnx") as tmp:        # write tmp (a file, or folder=True), check it; renamed onto m5.onnx on
        export_to(tmp)                    # success, removed on any error
    write_json(d, path); write_yaml(d, path); write_text(path, s); write_metrics(rows, path); read_metrics(path)

A write that fails for lack of space or permission raises WriteError: a UserError (one line, no traceback, through
resnet_lite.errors.cli) that is also an OSError, for callers that treat a failed write as a cache miss.
"""
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import UserError

__all__ = ["WriteError", "atomic_write", "staged", "write_text", "write_json", "write_yaml", "write_metrics",
           "read_metrics"]

_UMASK = os.umask(0o022)
os.umask(_UMASK)


class WriteError(UserError, OSError):
    """A file could not be written (disk full, permission denied)."""


def _write_error(path: Path, e: OSError) -> WriteError:
    return WriteError(f"cannot write {path} ({e.strerror or e}); free some space or fix the folder's permissions "
                      f"(or choose another --output-dir), then resume with --resume")


@contextlib.contextmanager
def staged(path, folder: bool = False):
    """Yield a temporary file (or folder) beside `path` with the permissions a new one would get (mkstemp makes 0600);
    rename it onto `path` (replacing a file, or an earlier folder) when the block ends without an error, else remove."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
            os.chmod(tmp, 0o777 & ~_UMASK)
        else:
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.fchmod(fd, 0o666 & ~_UMASK)
            os.close(fd)
            tmp = Path(name)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        try:
            yield tmp
        except OSError as e:  # the caller's writes into tmp (a full disk); its other errors pass through as they are
            if e.errno is None:
                raise
            raise _write_error(path, e) from None
        try:
            if folder and path.is_dir():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except OSError as e:
            raise _write_error(path, e) from None
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def atomic_write(path, write, mode="wb") -> Path:
    """Call write(file) on a temporary file beside `path`, flush and fsync it, then rename it to `path`: readers see
    the old file or the new one, never a part. WriteError (no temporary left behind) when it cannot be written."""
    path = Path(path)
    with staged(path) as tmp:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some file systems cannot fsync a directory
    return path


def write_text(path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def write_json(data: dict, path) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n")


def write_yaml(data: dict, path) -> Path:
    import yaml

    return atomic_write(path, lambda f: yaml.safe_dump(data, f, sort_keys=False), mode="w")


def write_metrics(rows: list[dict], path) -> Path:
    """metrics.jsonl: one JSON line per epoch, the whole file rewritten atomically."""
    return write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_metrics(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
