"""The one error type of bnn.data (kept free of torch so that the set-up script starts fast)."""


class DatasetError(ValueError):
    """A dataset cannot be found or read; the message names the place and how to fix it."""
