"""The one error tree of Porch. Only the CLI layer turns these into output."""

from __future__ import annotations


class PorchError(Exception):
    """Base of every error Porch raises on purpose."""

    exit_code = 1


class ConfigError(PorchError):
    """A pipeline config (or a set of them) is invalid; carries one line per problem."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ScriptError(PorchError):
    """A user script failed to load or raised; `user_traceback` shows only the user's frames."""

    def __init__(self, message: str, user_traceback: str = "") -> None:
        super().__init__(message)
        self.user_traceback = user_traceback


class WireError(PorchError):
    """A frame on a data socket could not be decoded; it is dropped and counted."""


class DeliveryError(PorchError):
    """Output its targets did not acknowledge in time: lost (memory outbox) or kept (durable)."""


class ControlError(PorchError):
    """The control channel between porch processes failed or got a malformed message."""


class UsageError(PorchError):
    """The user asked for something that cannot be done as asked (bad flag combination, etc.)."""

    exit_code = 2


class StorageError(PorchError):
    """Porch could not write (or read) its own state on disk, e.g. a full filesystem."""
