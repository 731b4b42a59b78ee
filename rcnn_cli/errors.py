"""Expected failures: shown to the user as one clear message, without a traceback."""


class RcnnError(Exception):
    """Base class of every error the CLI reports as a plain message (exit code 1)."""


class ConfigError(RcnnError):
    """A configuration key is unknown, missing, mistyped or an unsupported combination."""


class DataError(RcnnError):
    """A dataset file, image or annotation is invalid; the message names file, id and field."""


class CheckpointError(RcnnError):
    """A checkpoint is missing, truncated, untrusted or incompatible with the request."""


class ExportError(RcnnError):
    """A model cannot be exported, or the exported file does not reproduce the model."""
