"""User-facing errors: one line saying what is wrong and what to do, no traceback."""
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
