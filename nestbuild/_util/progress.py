"""Progress for byte transfers: rich bars on a terminal, plain lines in CI logs, or nothing.

A blob is shown from the moment work on it starts (a layer is compressed while it uploads,
which takes seconds for a large one), with its bytes and rate; piped, a line says when it
starts and one every :data:`PLAIN_EVERY` seconds says how far each unfinished blob is, so a
CI log never goes quiet for long.

Thread-safe: blobs move in parallel, each reporting into its own bar and the overall one.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

#: Seconds between the plain progress lines of unfinished blobs (not on a terminal).
PLAIN_EVERY = 5.0


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class Blob:
    """One blob's bar; ``advance`` is passed to the transfer as its progress callback.

    ``advance`` counts the bar's bytes (a layer's uncompressed bytes while it is compressed);
    ``sent`` counts bytes that went out when those differ (its compressed bytes).
    """

    def __init__(self, owner: Transfer, name: str, size: int, task: object | None,
                 status: str) -> None:
        self._owner, self.name, self.size, self._task = owner, name, size, task
        self.status = status
        self.done_bytes = 0
        self.sent_bytes = 0
        self.started = time.monotonic()
        self.finished = False

    def advance(self, n: int) -> None:
        self.done_bytes += n
        self._owner._advance(self, n)

    def sent(self, n: int) -> None:
        self.sent_bytes += n
        self._owner._sent(self)

    def finish(self, status: str, *, name: str | None = None, size: int | None = None) -> None:
        """``status``: what happened ("uploaded", "exists", "mounted", "downloaded");
        ``name`` and ``size`` replace what the blob was known as while it was made."""
        self.finished = True
        self._owner._finish(self, status, name, size)

    def describe(self) -> str:
        """One plain line: how far this blob is."""
        elapsed = max(time.monotonic() - self.started, 1e-3)
        line = f"  {self.name} {self.status} {human(self.done_bytes)}/{human(self.size)}"
        if self.sent_bytes:
            line += f", {human(self.sent_bytes)} sent"
        return f"{line} ({human(self.done_bytes / elapsed)}/s)"


class Transfer:
    def __init__(self, title: str, *, quiet: bool = False, stream: TextIO | None = None,
                 plain_every: float = PLAIN_EVERY) -> None:
        self.title = title
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.plain_every = plain_every
        self._lock = threading.Lock()
        self._rich: object | None = None
        self._overall: object | None = None
        self._active: list[Blob] = []
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

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
            # no total until a blob is known: an empty bar, not a full "0/0" one
            self._overall = progress.add_task(self.title, total=None)
        elif not self.quiet:
            self._say(f"{self.title} ...")
            self._ticker = threading.Thread(target=self._tick, name="nestbuild-progress",
                                            daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._rich is not None:
            self._rich.stop()  # type: ignore[attr-defined]

    def _tick(self) -> None:
        while not self._stop.wait(self.plain_every):
            with self._lock:
                lines = [b.describe() for b in self._active if not b.finished]
            for line in lines:
                self._say(line)

    def _say(self, line: str) -> None:
        with self._lock:
            print(line, file=self.stream, flush=True)

    def blob(self, name: str, size: int, status: str = "") -> Blob:
        """A blob's bar; with ``status`` ("compressing", "uploading") work on it starts now
        and it is shown at once."""
        task = None
        if self._rich is not None:
            rich = self._rich
            with self._lock:
                task = rich.add_task(  # type: ignore[attr-defined]
                    f"  {name} {status}".rstrip(), total=size)
                total = rich.tasks[self._overall].total or 0  # type: ignore[attr-defined]
                rich.update(self._overall, total=total + size)  # type: ignore[attr-defined]
        blob = Blob(self, name, size, task, status)
        if status:
            with self._lock:
                self._active.append(blob)
            if self._rich is None and not self.quiet:
                self._say(f"  {name} {status} ({human(size)})")
        return blob

    def _advance(self, blob: Blob, n: int) -> None:
        if self._rich is not None:
            self._rich.update(blob._task, advance=n)  # type: ignore[attr-defined]
            self._rich.update(self._overall, advance=n)  # type: ignore[attr-defined]

    def _sent(self, blob: Blob) -> None:
        if self._rich is not None:
            self._rich.update(  # type: ignore[attr-defined]
                blob._task, description=f"  {blob.name} {blob.status}, "
                f"{human(blob.sent_bytes)} sent")

    def _finish(self, blob: Blob, status: str, name: str | None, size: int | None) -> None:
        with self._lock:
            if blob in self._active:
                self._active.remove(blob)
        shown = f"{blob.name} -> {name}" if name and name != blob.name else blob.name
        if self._rich is not None:
            rest = blob.size - blob.done_bytes
            self._rich.update(blob._task, completed=blob.size,  # type: ignore[attr-defined]
                              description=f"  {shown} {status}"
                              + (f" ({human(size)})" if size is not None else ""))
            if rest > 0:
                self._rich.update(self._overall, advance=rest)  # type: ignore[attr-defined]
        elif not self.quiet:
            self._say(f"  {shown} {human(blob.size if size is None else size)} {status}")

    def note(self, line: str) -> None:
        if self._rich is not None:
            self._rich.console.print(line)  # type: ignore[attr-defined]
        elif not self.quiet:
            self._say(line)


Callback = Callable[[int], None]
