"""One rich console for logs and progress (stderr) and a rich-backed progress reporter."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

err_console = Console(stderr=True)
out_console = Console()


class RichProgress:
    """Implements ``edgesam_core.progress.Progress`` on a rich progress display (use as a context)."""

    def __init__(self, transfer: bool = False, console: Console | None = None) -> None:
        columns = [TextColumn("[progress.description]{task.description}"), BarColumn()]
        if transfer:
            columns += [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
        else:
            columns += [MofNCompleteColumn(), TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
        self._progress = Progress(*columns, console=console or err_console, transient=False)

    def __enter__(self) -> "RichProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def add_task(self, description: str, total: float | None = None) -> int:
        return int(self._progress.add_task(description, total=total))

    def advance(self, task_id: int, amount: float = 1.0) -> None:
        self._progress.advance(task_id, amount)

    def update(self, task_id: int, *, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None:
        kwargs = {k: v for k, v in (("completed", completed), ("total", total), ("description", description))
                  if v is not None}
        self._progress.update(task_id, **kwargs)

    def finish(self, task_id: int) -> None:
        task = self._progress.tasks[[t.id for t in self._progress.tasks].index(task_id)]
        if task.total is not None:
            self._progress.update(task_id, completed=task.total)
        self._progress.stop_task(task_id)

    def log(self, message: str) -> None:
        self._progress.console.log(message)
