"""Errors that the CLI reports as one line with a non-zero exit."""


class EditflowError(RuntimeError):
    """A user-facing failure: bad input, missing model, refused operation."""
