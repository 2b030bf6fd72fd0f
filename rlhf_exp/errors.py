"""Errors meant for people: the message says which file, line or key, and what was expected."""


class UserError(ValueError):
    """Bad input or config: reported without a traceback, exit status non-zero, nothing written."""
