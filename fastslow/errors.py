"""User-facing errors: one line naming the input and what is wrong."""


class FastslowError(Exception):
    """An error caused by the user's input or environment, shown as one line without a traceback."""


class DecodeError(FastslowError):
    """A single media item could not be read or decoded; the item is skipped and reported."""
