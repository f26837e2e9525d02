"""User-facing error families. The CLI turns each into one line and exit code 2."""


class RayganError(Exception):
    """Base of every error caused by user input rather than a bug."""


class ConfigError(RayganError):
    """A config file, search space or command-line override is invalid."""


class DataError(RayganError):
    """A data set cannot be read or does not fit the model."""


class CheckpointError(RayganError):
    """A checkpoint is missing, corrupt or does not match the model or data."""


class ModelError(RayganError):
    """A user's model cannot be loaded or breaks the G(z, y) / D(x, y) contract."""


class SearchFailed(RayganError):
    """Every trial of a search failed; the message carries the first trial's error."""
