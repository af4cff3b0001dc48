"""The one exception type for user mistakes: the CLI prints its message as one line and exits 2."""

import reprlib


class UsageError(Exception):
    """Bad input from the user (a file, a field, a flag, a model file). The message says what is
    wrong and what would be valid; no traceback is shown for it."""


class _Short(reprlib.Repr):
    def __init__(self):
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother, self.maxlong = 2, 60, 60, 40
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = 4

    def repr_int(self, x, level):
        if x.bit_length() > 128:  # repr() of a huge int is slow, and refused beyond 4,300 digits
            return f"<an integer of {x.bit_length():,} bits>"
        return super().repr_int(x, level)

    def repr_str(self, x, level):
        return repr(x) if len(x) <= self.maxstring else f"{x[:self.maxstring]!r}... ({len(x):,} characters)"


_short = _Short()


def excerpt(value) -> str:
    """A short repr of any value for an error line: nested, huge or self-repeating values (YAML
    anchors) are cut, so the line stays short and is made in bounded time and memory."""
    return _short.repr(value)
