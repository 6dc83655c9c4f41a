"""Work in threads whose failures reach the caller: the key decrypting while the registry is
read, blobs stored side by side. Only the standard library, so the key can start early."""

from __future__ import annotations

import threading

TYPE_CHECKING = False  # typing is not imported: this runs before a key's scrypt starts
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import TypeVar

    T = TypeVar("T")


def in_thread(work: Callable[[], T], name: str = "nestbuild") -> Callable[[], T]:
    """Start ``work`` in a daemon thread; the returned callable waits, then returns its result
    or raises its exception (in the caller's thread, where it can be reported)."""
    outcome: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()

    def wait() -> T:
        thread.join()
        if failed:
            raise failed[0]
        return outcome[0]

    return wait


def run_all(works: Iterable[Callable[[], object]]) -> None:
    """Run ``works`` side by side and wait for all; raise the first failure.

    The first runs in the caller's thread: one thread fewer.
    """
    todo = list(works)
    if not todo:
        return
    first, *rest = todo
    waits = [in_thread(work) for work in rest]
    failures: list[BaseException] = []
    try:
        first()
    except BaseException as exc:
        failures.append(exc)
    for wait in waits:
        try:
            wait()
        except BaseException as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
