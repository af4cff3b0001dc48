"""The one exception type for user mistakes: the CLI prints its message as one line and exits 2."""


class UsageError(Exception):
    """Bad input from the user (a file, a field, a flag, a model file). The message says what is
    wrong and what would be valid; no traceback is shown for it."""
