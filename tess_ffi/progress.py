"""Progress bars for long steps, shared by the command line and in-process tasks.

Tasks call :func:`advance`; it updates the bar the command line opened with
:func:`progress_bar` and does nothing elsewhere (Dask workers, tests, deployments).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_lock = threading.Lock()
_active: dict[str, tuple[Progress, int]] = {}


@contextmanager
def progress_bar(key: str, description: str, total: int | None = None) -> Iterator[None]:
    """Show a progress bar on stderr while the block runs (only on a terminal)."""
    if not sys.stderr.isatty():
        yield
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )
    with bar:
        task_id = bar.add_task(description, total=total)
        with _lock:
            _active[key] = (bar, task_id)
        try:
            yield
        finally:
            with _lock:
                _active.pop(key, None)


def set_total(key: str, total: int) -> None:
    """Set the total of an open bar (no-op when none is open)."""
    with _lock:
        entry = _active.get(key)
    if entry:
        entry[0].update(entry[1], total=total)


def advance(key: str, n: int = 1) -> None:
    """Advance an open bar by ``n`` (no-op when none is open)."""
    with _lock:
        entry = _active.get(key)
    if entry:
        entry[0].advance(entry[1], n)
