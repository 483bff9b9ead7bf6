"""User-facing errors: one line saying what is wrong and what to do, no traceback."""
import difflib


class UserError(Exception):
    """A mistake the user can fix (bad config, missing data, unknown model). Printed as one line."""


def did_you_mean(word, choices, n: int = 1, cutoff: float = 0.6) -> str:
    """"did you mean 'x'?" (n=1) or "did you mean x, y?" for the closest of `choices` to `word`; "" when none is
    close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=cutoff)
    if not close:
        return ""
    return f"did you mean '{close[0]}'?" if n == 1 else f"did you mean {', '.join(close)}?"


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most `limit` characters: what a one-line error quotes of it."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]
