"""Typed errors. Each names what is wrong and how to fix it; HTTP routes map them to 4xx."""

from __future__ import annotations


class AleError(Exception):
    """Base class: an error whose message is safe to show to a user."""

    status = 400


class ConfigError(AleError, ValueError):
    """A setting has a bad value. `field` is the environment variable's name."""

    status = 500

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"{field}: {problem}")


class LabelConfigError(AleError, ValueError):
    """The project's label config cannot be used for object detection."""


class LabelMismatchError(LabelConfigError):
    """The model's classes and the label config's labels do not match."""


class PayloadError(AleError, ValueError):
    """A request body is malformed."""


class MediaError(AleError):
    """A task's image could not be fetched or decoded. The task gets no prediction."""


class AdapterError(AleError):
    """A model adapter is missing, misconfigured or failed to load."""

    status = 500


class PolicyError(AleError, ValueError):
    """The configured selection policy cannot run with this model."""


class TrainingError(AleError):
    """Training cannot run; the message says why and what to do. The served model is untouched."""

    status = 409
