"""What every command-line tool shares: user mistakes print one line `error: ...` (exit 2) instead of a traceback."""
import argparse
import functools
import os
import signal
import sys

from .errors import UserError

__all__ = ["cli", "ArgumentParser"]


def cli(main):
    """Wrap a command-line entry point: a UserError prints `error: ...` and exits 2, no traceback. Under a launcher
    every process meets the same error (resnet_lite.training.distributed.agree) and the main process alone prints it."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            if "TORCHELASTIC_RUN_ID" in os.environ:
                # torchrun's agent (also accelerate launch's) stops the other processes with SIGTERM as soon as one
                # exits; they are leaving with this same error, and exit with its code rather than the signal's
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are a UserError (one line, exit 2 through `cli`) instead of the usage block.

    doc: a module docstring; its first paragraph becomes the description, the rest (examples) the epilog."""

    def __init__(self, prog: str, doc: str | None = None, **kwargs):
        if doc:
            first, *rest = doc.strip().split("\n\n")
            kwargs.setdefault("description", first)
            kwargs.setdefault("epilog", "\n\n".join(rest))
        super().__init__(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message):
        raise UserError(f"{message}; see `{self.prog} --help`")
