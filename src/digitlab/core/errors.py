"""User-facing error types: the CLI prints their message on one line and exits non-zero."""


class DigitlabError(Exception):
    """Base class for errors caused by user input (bad file, unknown name, missing run)."""


class DataError(DigitlabError):
    """A dataset is missing, corrupt, or not in a supported format."""


class ConfigError(DigitlabError):
    """An unknown preset, model or option value."""


class RunDirError(DigitlabError):
    """A run directory is missing or incomplete."""


class ImageError(DigitlabError):
    """An input image is unreadable, unsupported or too large."""


class StorageError(DigitlabError):
    """A file could not be written (disk full, file too large, no permission)."""


class DigitlabWarning(UserWarning):
    """Something the user allowed but should know about (an uncalibrated run); the CLI prints it on one line."""
