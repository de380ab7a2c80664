"""Errors the CLI turns into one line on stderr and a non-zero exit."""


class UserError(Exception):
    """Bad input or an unreachable device: the message is the whole story for the user."""
