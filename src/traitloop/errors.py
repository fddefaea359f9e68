"""The one exception type that means "the user gave us something wrong".

The CLI turns it into a single clear message and exit code 2; anything else is a bug and keeps its
traceback. Messages say what is wrong and how to fix it.
"""


class UserError(Exception):
    """Bad input: a config, a trait, a model reference, a data file. Exit code 2, no traceback."""
