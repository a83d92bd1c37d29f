"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a flag, a file or a value. The message names it and says how to fix it."""
