"""User-facing errors: one line saying what is wrong and what to do, no traceback."""
import argparse
import difflib
import functools
import sys


class UserError(Exception):
    """A mistake the user can fix (bad config, missing data, unknown model). Printed as one line."""


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


def did_you_mean(word, choices, n: int = 1, cutoff: float = 0.6) -> str:
    """"did you mean 'x'?" (n=1) or "did you mean x, y?" for the closest of `choices` to `word`; "" when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=cutoff)
    if not close:
        return ""
    return f"did you mean '{close[0]}'?" if n == 1 else f"did you mean {', '.join(close)}?"
