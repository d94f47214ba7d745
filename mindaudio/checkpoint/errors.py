"""The checkpoint layer's user-facing errors."""
from mindaudio.config import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be fetched, read or verified, or does not fit the model; names the file."""


class CheckpointDownloadError(CheckpointError):
    """A checkpoint URL could not be fetched; the message names the URL."""
