"""Progress of long offline work (``evaluate``, ``replay``): records done, rate, time left.

On a terminal one line is rewritten in place a few times a second; otherwise (a log, a
pipe) a plain line is written every ``every`` seconds, and always one at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO, TypeVar, overload

T = TypeVar("T")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """``update(done)`` as work advances; ``close()`` at the end. A ``done`` below the last
    one starts a new pass (``evaluate`` replays the history more than once)."""

    def __init__(
        self, what: str, total: int, unit: str, stream: TextIO | None = None,
        every: float | None = None, shown: Callable[[float], str] = "{:,.0f}".format,
    ) -> None:  # fmt: skip
        self.what, self.total, self.unit, self.shown = what, total, unit, shown
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.every = every if every is not None else (0.25 if self.tty else 10.0)
        self.passes = 1
        self.done = 0
        self.started = self.last = time.monotonic()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.what}{f' (pass {self.passes})' if self.passes > 1 else ''}: "
        if self.total <= 0:  # how much there is to do is not known: the count and the rate
            return text + f"{self.shown(self.done)} {self.unit}, {self.shown(rate)} {self.unit}/s"
        share = self.done / self.total
        text += (
            f"{self.shown(self.done)} of {self.shown(self.total)} {self.unit} ({share:.0%}), "
            f"{self.shown(rate)} {self.unit}/s"
        )
        if 0 < self.done < self.total:
            text += f", about {_duration((self.total - self.done) / rate)} left"
        return text

    def update(self, done: int) -> None:
        if done < self.done:  # a new pass over the same records
            self._write(end=True)
            self.passes += 1
            self.started = time.monotonic()
        self.done = done
        if time.monotonic() - self.last >= self.every:
            self._write(end=False)

    def close(self, final_line: bool = True) -> None:
        """The last line (``final_line``), or, when the caller says the outcome itself,
        only the terminal's line cleared."""
        if final_line:
            self._write(end=True)
        elif self.tty and self.last > self.started:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def _write(self, end: bool) -> None:
        self.last = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + self.line() + ("\n" if end else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


class Reported(Sequence[T]):
    """A sequence whose slices (the replay's batches) report how far the work got."""

    def __init__(self, items: Sequence[T], progress: Progress) -> None:
        self.items, self.progress = items, progress

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...
    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        if isinstance(index, slice):
            chunk = self.items[index]
            if index.start is not None and index.stop is not None and index.step is None:
                self.progress.update(min(index.stop, len(self.items)))
            return chunk
        return self.items[index]
