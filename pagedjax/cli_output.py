"""What the command line prints besides results: escaped text, a progress line, quiet imports.

* `printable(text)`: generated text made safe for a terminal (control characters escaped).
* `ProgressLine`: a one-line note on stderr while something slow runs (the first compile).
* `quiet_transformers_notices()`: drops transformers' "PyTorch was not found" notice, which
  reads as breakage although pagedjax needs only its tokenizers.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import unicodedata

_KEPT_CONTROLS = "\n\t"  # line structure survives; everything else in Unicode's Cc category is escaped
_TORCH_NOTICE = "PyTorch was not found"


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every control character (Unicode category Cc: C0, DEL, C1, e.g. ESC or a
    carriage return) but newline and tab written as a `\\xNN` escape, so model output cannot
    move the cursor, recolour or clear the terminal."""
    return "".join(_escape(ch) if unicodedata.category(ch) == "Cc" and ch not in _KEPT_CONTROLS else ch
                   for ch in text)


class _DropTorchNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TORCH_NOTICE)


def quiet_transformers_notices() -> None:
    """Filters transformers' import-time notice that PyTorch is missing (call before importing
    transformers; the filter lives on its logger, nothing else it logs is touched)."""
    logger = logging.getLogger("transformers")
    if not any(isinstance(f, _DropTorchNotice) for f in logger.filters):
        logger.addFilter(_DropTorchNotice())


class ProgressLine:
    """`with ProgressLine("compiling"):` writes `pagedjax: compiling ...` to `stream` if the block
    is still running after `delay` seconds. On a terminal it is a spinner with the seconds so far,
    erased when the block ends; elsewhere (a pipe, a log file) the line is written once."""

    _FRAMES = "|/-\\"

    def __init__(self, message: str, stream=None, *, delay: float = 1.0, interval: float = 0.1):
        if delay < 0 or interval <= 0:
            raise ValueError(f"delay must be >= 0 and interval > 0, got {delay}, {interval}")
        self.message, self.stream = message, stream if stream is not None else sys.stderr
        self.delay, self.interval = delay, interval
        self.shown = False  # whether the line was written (for callers and tests)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "ProgressLine":
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="pagedjax-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        if self.shown and self._is_terminal():
            self._write("\r\033[K")  # erase the spinner's line
        return None

    def _is_terminal(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _run(self) -> None:
        if self._done.wait(self.delay):
            return
        self.shown = True
        if not self._is_terminal():
            self._write(f"pagedjax: {self.message} ...\n")
            return
        frame = 0
        while not self._done.is_set():
            elapsed = time.perf_counter() - self._start
            self._write(f"\r{self._FRAMES[frame % len(self._FRAMES)]} pagedjax: {self.message} ({elapsed:.0f} s)")
            frame += 1
            self._done.wait(self.interval)
