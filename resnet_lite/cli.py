"""What every command-line tool shares: user mistakes print one line `error: ...` (exit 2) instead of a traceback."""
import argparse
import functools
import sys

from .errors import UserError

__all__ = ["cli", "ArgumentParser"]


def cli(main):
    """Wrap a command-line entry point: a UserError prints `error: ...` and exits 2, no traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
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
