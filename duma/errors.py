"""User-facing errors: one line saying what is wrong and what to do."""

from __future__ import annotations


class DumaError(Exception):
    """An error the CLI prints as one line (no traceback unless --debug), exit code 1.

    ``hint`` says what to do about it; it is appended after the message.
    """

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(DumaError):
    """Bad configuration: names the key path (and file) and what is allowed."""

    exit_code = 2


class PluginError(DumaError):
    """A plugin failed to load or raised inside a hook (strict mode), or a name clash."""


class ModelLoadError(DumaError):
    """A model could not be found or loaded."""


class LogStoreError(DumaError):
    """The conversation log database is locked, corrupt or unreadable."""
