"""Progress for byte transfers: rich bars on a terminal, plain lines in CI logs, or nothing.

Thread-safe: blobs move in parallel, each reporting into its own bar and the overall one.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TextIO


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class Blob:
    """One blob's bar; ``advance`` is passed to the transfer as its progress callback."""

    def __init__(self, owner: Transfer, name: str, size: int, task: object | None) -> None:
        self._owner, self.name, self.size, self._task = owner, name, size, task
        self.done_bytes = 0

    def advance(self, n: int) -> None:
        self.done_bytes += n
        self._owner._advance(self, n)

    def finish(self, status: str) -> None:
        """``status``: what happened ("uploaded", "exists", "mounted", "downloaded")."""
        self._owner._finish(self, status)


class Transfer:
    def __init__(self, title: str, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.title = title
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._rich: object | None = None
        self._overall: object | None = None

    def __enter__(self) -> Transfer:
        if not self.quiet and self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TransferSpeedColumn,
            )

            progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                DownloadColumn(binary_units=True), TransferSpeedColumn(),
                                console=Console(file=self.stream), transient=False)
            progress.start()
            self._rich = progress
            self._overall = progress.add_task(self.title, total=0)
        elif not self.quiet:
            self._say(f"{self.title} ...")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._rich is not None:
            self._rich.stop()  # type: ignore[attr-defined]

    def _say(self, line: str) -> None:
        with self._lock:
            print(line, file=self.stream, flush=True)

    def blob(self, name: str, size: int) -> Blob:
        task = None
        if self._rich is not None:
            rich = self._rich
            task = rich.add_task(f"  {name}", total=size)  # type: ignore[attr-defined]
            with self._lock:
                total = rich.tasks[self._overall].total or 0  # type: ignore[attr-defined]
                rich.update(self._overall, total=total + size)  # type: ignore[attr-defined]
        return Blob(self, name, size, task)

    def _advance(self, blob: Blob, n: int) -> None:
        if self._rich is not None:
            self._rich.update(blob._task, advance=n)  # type: ignore[attr-defined]
            self._rich.update(self._overall, advance=n)  # type: ignore[attr-defined]

    def _finish(self, blob: Blob, status: str) -> None:
        if self._rich is not None:
            rest = blob.size - blob.done_bytes
            self._rich.update(blob._task, completed=blob.size,  # type: ignore[attr-defined]
                              description=f"  {blob.name} {status}")
            if rest > 0:
                self._rich.update(self._overall, advance=rest)  # type: ignore[attr-defined]
        elif not self.quiet:
            self._say(f"  {blob.name} {human(blob.size)} {status}")

    def note(self, line: str) -> None:
        if self._rich is not None:
            self._rich.console.print(line)  # type: ignore[attr-defined]
        elif not self.quiet:
            self._say(line)


Callback = Callable[[int], None]
