"""Errors a user can cause, each with a message and a hint saying what to do about it."""

from __future__ import annotations


class StudioError(Exception):
    """Base of every error the engine raises on purpose: ``message`` says what went wrong,
    ``hint`` says what the user can change."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message + (f"\nHint: {self.hint}" if self.hint else "")


class ModelSourceError(StudioError):
    """The model could not be found, converted or loaded."""


class DatasetError(StudioError):
    """The dataset could not be read or does not match the expected format."""


class TrainingError(StudioError):
    """Training could not start or stopped on an error."""


class ExportError(StudioError):
    """An export could not be written."""


class Cancelled(StudioError):
    """The user asked the work to stop."""
