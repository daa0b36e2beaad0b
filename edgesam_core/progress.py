"""A minimal progress protocol so the core reports progress without importing rich or tqdm.

The CLI passes a rich-backed implementation (``edgesam_cli.console.RichProgress``); library users get
:class:`NullProgress` unless they pass their own.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress of long-running work as named tasks."""

    def add_task(self, description: str, total: float | None = None) -> int:
        """Start a task and return its id."""

    def advance(self, task_id: int, amount: float = 1.0) -> None:
        """Advance a task by ``amount`` units."""

    def update(self, task_id: int, *, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None:
        """Set absolute progress, total or description of a task."""

    def finish(self, task_id: int) -> None:
        """Mark a task as done."""

    def log(self, message: str) -> None:
        """Emit a one-line message next to the progress display."""


class NullProgress:
    """A :class:`Progress` that records nothing; the default for library calls."""

    def __init__(self) -> None:
        self._next = 0

    def add_task(self, description: str, total: float | None = None) -> int:
        self._next += 1
        return self._next

    def advance(self, task_id: int, amount: float = 1.0) -> None:
        return None

    def update(self, task_id: int, *, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None:
        return None

    def finish(self, task_id: int) -> None:
        return None

    def log(self, message: str) -> None:
        return None
