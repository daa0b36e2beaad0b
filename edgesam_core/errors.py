"""Exception hierarchy shared by every part of ``edgesam_core``.

Each error carries a one-line message that names the problem and, where one exists, the fix.
The CLI maps these classes to exit codes (see ``edgesam_cli.errors``).
"""

from __future__ import annotations


class EdgeSamError(Exception):
    """Base class for every error the toolkit raises on purpose."""

    exit_code: int = 1


class ConfigError(EdgeSamError):
    """A configuration, option or preset value is invalid."""

    exit_code = 2


class UnknownVariantError(ConfigError):
    """A model variant name is not in the registry."""


class InputError(EdgeSamError):
    """User input (an image, a prompt, a path) is unusable."""

    exit_code = 2


class CheckpointError(EdgeSamError):
    """A checkpoint file cannot be read (missing, truncated, not a checkpoint): bad input."""

    exit_code = 2


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not fit the requested model variant."""


class DownloadError(EdgeSamError):
    """A download failed or its result did not verify."""


class DatasetError(EdgeSamError):
    """A dataset is missing, malformed or corrupt: bad input."""

    exit_code = 2


class MissingDependencyError(EdgeSamError):
    """An optional dependency, or a GPU, is not available."""

    exit_code = 3

    def __init__(self, message: str, extra: str | None = None) -> None:
        super().__init__(message)
        self.extra = extra


class ExportParityError(EdgeSamError):
    """An exported artifact was written but does not match PyTorch within tolerance."""

    exit_code = 4


class TrainingError(EdgeSamError):
    """A training run cannot continue (for example too many non-finite steps in a row)."""
