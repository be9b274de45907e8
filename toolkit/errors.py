"""Exceptions that carry a user-facing message: what is wrong, where, and how to fix it."""


class ToolkitError(Exception):
    """Base class: the entry point prints these as one line instead of a traceback."""


class ConfigError(ToolkitError, ValueError):
    """A config value is invalid. The message names the key, the value and what is allowed."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"invalid config {key}={value!r}: {allowed}")


class DataError(ToolkitError):
    """Input data is missing or malformed. The message names the file, the record and the fix."""


class WeightsNotFoundError(ToolkitError, FileNotFoundError):
    """Pretrained weights are not on disk and cannot be downloaded here."""


class ExportError(ToolkitError):
    """The model could not be exported in the requested format (or has no form in it)."""
