"""Rich progress bars with ETA for every long step (loading, sampling, training, judging)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Reporter:
    """`with reporter.step("cycle 1 sampling", total=50) as advance: ... advance(n)`."""

    def __init__(self, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )

    def __enter__(self) -> Reporter:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def log(self, message: str) -> None:
        self.progress.console.print(message)

    @contextmanager
    def step(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        task = self.progress.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str | None = None) -> None:
            self.progress.update(task, advance=n, **({"info": info} if info is not None else {}))

        try:
            yield advance
        finally:
            self.progress.update(task, completed=self.progress.tasks[task].total or 1, total=self.progress.tasks[task].total or 1)
