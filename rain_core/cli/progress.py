"""Progress on stderr while long work runs: one status line, rewritten in place, that says what is
happening (loading a model, plain decoding, the search), how far it got (tokens, commits, searches),
the seconds since it started, and the tail of the committed text as it grows. It is redrawn at
every commit and once a second in between, so a commit that takes a minute still shows the clock.

Only on a terminal: when stderr is a file or a pipe, or with ``--quiet``, nothing is written, and a
log or a captured stderr gets no control characters. ``rain generate`` and ``rain demo`` use it.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TextIO

_CLEAR = "\r\x1b[K"
_SHOWING: set[Progress] = set()  # the status lines on screen now (a log record clears them first)


class Progress:
    """A status line on ``stream`` (default stderr), only when it is a terminal and ``quiet`` is False.
    ``stage(label)`` starts a stage (its clock at 0), ``commit(...)`` counts a commit, ``done()``
    clears the line (the text printed afterwards starts on a clean line). A context manager."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False, interval: float = 1.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = not quiet and bool(isatty is not None and isatty())
        self.interval = interval
        self._lock = threading.Lock()
        self._label = ""
        self._started = time.monotonic()
        self._counts: dict[str, int] = {}
        self._text = ""
        self._max_tokens: int | None = None
        self._shown = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # --- what happens ------------------------------------------------------------------------------
    def stage(self, label: str, *, max_tokens: int | None = None) -> None:
        """A new stage: ``label`` (e.g. "loading the model", "RAIN"), its counters and clock reset."""
        with self._lock:
            self._label = label
            self._started = time.monotonic()
            self._counts = {}
            self._text = ""
            self._max_tokens = max_tokens
        self._start_ticker()
        self.draw()

    def commit(self, text: str, tokens: int, stats: Mapping[str, Any] | None) -> None:
        """One committed token set: ``text`` it adds, ``tokens`` it holds, and its statistics."""
        with self._lock:
            self._text += text
            counts = self._counts
            counts["tokens"] = counts.get("tokens", 0) + tokens
            if stats is not None:
                counts["commits"] = counts.get("commits", 0) + 1
                counts["searches"] = counts.get("searches", 0) + int(stats.get("searches", 0) or 0)
        self.draw()

    def done(self) -> None:
        """Clear the line and stop the clock (the stage is over)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        self.clear()
        _SHOWING.discard(self)

    def clear(self) -> None:
        """Take the line off the screen (the next ``draw`` puts it back)."""
        with self._lock:
            if self._shown:
                self.stream.write(_CLEAR)
                self.stream.flush()
                self._shown = False

    # --- drawing -------------------------------------------------------------------------------------
    def line(self) -> str:
        """The status line as it would be drawn now (no control characters)."""
        with self._lock:
            parts = []
            counts = self._counts
            if "tokens" in counts:
                limit = f"/{self._max_tokens}" if self._max_tokens else ""
                parts.append(f"{counts['tokens']}{limit} tokens")
            if "commits" in counts:
                parts.append(f"{counts['commits']} commits, {counts['searches']} searches")
            parts.append(f"{time.monotonic() - self._started:.0f} s")
            head = f"rain: {self._label}: " + ", ".join(parts)
            tail = " ".join(self._text.split())
        width = max(20, self._columns() - 1)
        room = width - len(head) - 3
        if tail and room > 10:
            head += " | " + (tail if len(tail) <= room else "..." + tail[-(room - 3) :])
        return head[:width]

    def _columns(self) -> int:
        """The terminal's width: the stream's own terminal, else ``$COLUMNS`` or 100."""
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            columns = 0
        return columns or shutil.get_terminal_size((100, 24)).columns

    def draw(self) -> None:
        if not self.enabled or not self._label:
            return
        text = self.line()
        with self._lock:
            self.stream.write(_CLEAR + text)
            self.stream.flush()
            self._shown = True
        _SHOWING.add(self)

    def _start_ticker(self) -> None:
        if not self.enabled or self._ticker is not None:
            return
        self._stop.clear()

        def tick() -> None:
            while not self._stop.wait(self.interval):
                self.draw()

        self._ticker = threading.Thread(target=tick, name="rain-progress", daemon=True)
        self._ticker.start()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.done()


class LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log records on stderr that do not run into a status line: the line is cleared before a record
    is written and drawn again after it (``rain -v``)."""

    def emit(self, record: logging.LogRecord) -> None:
        showing = list(_SHOWING)
        for progress in showing:
            progress.clear()
        super().emit(record)
        for progress in showing:
            progress.draw()


class quiet_loading:
    """Hugging Face's progress bars ("Loading weights", downloads) off while the block runs, unless
    ``verbose``: the environment variable the hub library reads when it is imported, and the switches
    of the libraries already imported, put back as they were afterwards."""

    _VARIABLE = "HF_HUB_DISABLE_PROGRESS_BARS"

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self._restore: list[Any] = []

    def __enter__(self) -> quiet_loading:
        import os

        if self.verbose or self._VARIABLE in os.environ:  # -v, or the user decided
            return self
        os.environ[self._VARIABLE] = "1"
        self._restore.append(lambda: os.environ.pop(self._VARIABLE, None))
        logging = sys.modules.get("transformers.utils.logging")
        if logging is not None and logging.is_progress_bar_enabled():
            logging.disable_progress_bar()
            self._restore.append(logging.enable_progress_bar)
        hub = sys.modules.get("huggingface_hub.utils")
        if hub is not None and not hub.are_progress_bars_disabled():
            hub.disable_progress_bars()
            self._restore.append(hub.enable_progress_bars)
        return self

    def __exit__(self, *exc: object) -> None:
        while self._restore:
            self._restore.pop()()
