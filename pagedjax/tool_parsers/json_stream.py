"""An incremental JSON reader that re-emits what it reads in `json.dumps` form, piece by piece.

A streamed tool call must add up to the same `arguments` string as the whole-text parse,
which (as in vLLM) is `json.dumps(json.loads(...), ensure_ascii=False)`. `JsonStreamer`
reads one JSON object or array a character at a time, checks it strictly (as `json.loads`
does: no trailing commas, no raw control characters in strings) and emits, for every complete
token, its text in that canonical form (`", "` and `": "` separators, strings re-escaped,
numbers re-printed). Each piece is tagged with the path of the value it belongs to, so a
caller can route, say, everything under `"arguments"` to a tool call's argument deltas.

Concatenating the pieces under one path gives `json.dumps` of the value at that path; the one
difference is an object with a repeated key, which `json.loads` collapses and this keeps.
"""

from __future__ import annotations

import dataclasses
import json
import re

JSON_WHITESPACE = " \t\n\r"
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_NUMBER_CHARS = frozenset("0123456789+-.eE")
_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = frozenset("0123456789abcdefABCDEF")

Path = tuple  # keys (str) and indices (int) from the root to a value


class JsonStreamError(ValueError):
    """The text is not valid JSON (or not an object/array at the root)."""


@dataclasses.dataclass
class _Frame:
    kind: str            # "{" or "["
    path: Path           # the path of this container
    state: str           # object: key_or_end, key, colon, value, comma_or_end; array: value_or_end, value, comma_or_end
    key: str | None = None
    index: int = 0

    def child_path(self) -> Path:
        return self.path + ((self.key,) if self.kind == "{" else (self.index,))


@dataclasses.dataclass(frozen=True)
class JsonEvent:
    """Canonical text of the value at `path` (`end=False`), or the end of that value (`end=True`, text "")."""

    path: Path
    text: str = ""
    end: bool = False


class JsonStreamer:
    """Reads one JSON object or array incrementally; `feed` returns its events and the unread rest.

    roots: the opening characters accepted for the root value ("{[", or just "{" or "[").
    """

    def __init__(self, roots: str = "{["):
        if not roots or set(roots) - set("{["):
            raise ValueError(f"roots must be made of '{{' and '[', got {roots!r}")
        self._roots = roots
        self._stack: list[_Frame] = []
        self._started = False
        self.done = False
        self._token: str | None = None   # "str", "key", "num", "lit" while inside a token
        self._token_path: Path = ()
        self._buf = ""                   # number / literal characters, or key characters
        self._escape: str | None = None  # "\\..." while reading an escape sequence
        self._high_surrogate: int | None = None
        self._events: list[JsonEvent] = []

    def feed(self, text: str) -> tuple[list[JsonEvent], str]:
        """Reads `text`; returns the events and the text after the root value (when it ended in `text`)."""
        self._events = []
        for i, c in enumerate(text):
            if self.done:
                return self._events, text[i:]
            self._char(c)
        return self._events, ""

    # -- output --------------------------------------------------------------------------
    def _emit(self, path: Path, text: str) -> None:
        last = self._events[-1] if self._events else None
        if last is not None and not last.end and last.path == path:
            self._events[-1] = JsonEvent(path, last.text + text)
        else:
            self._events.append(JsonEvent(path, text))

    def _value_done(self, path: Path) -> None:
        self._events.append(JsonEvent(path, end=True))
        if self._stack:
            self._stack[-1].state = "comma_or_end"
        else:
            self.done = True

    # -- characters ----------------------------------------------------------------------
    def _char(self, c: str) -> None:
        if self._token in ("str", "key"):
            self._string_char(c)
            return
        if self._token == "num":
            if c in _NUMBER_CHARS:
                self._buf += c
                return
            if self._buf == "-" and c == "I":
                self._token, self._buf = "lit", "-I"
                return
            self._finish_number()
        elif self._token == "lit":
            self._literal_char(c)
            return
        if c in JSON_WHITESPACE:
            return
        if not self._started:
            if c not in self._roots:
                raise JsonStreamError(f"expected the root to open with one of {self._roots!r}, got {c!r}")
            self._started = True
            self._open(c, ())
            return
        self._structure(c, self._stack[-1])

    def _structure(self, c: str, frame: _Frame) -> None:
        state = frame.state
        if frame.kind == "{":
            if state in ("key_or_end", "key") and c == '"':
                self._token, self._buf = "key", ""
                self._emit(frame.path, '"')
            elif c == "}" and state in ("key_or_end", "comma_or_end"):
                self._close(frame)
            elif state == "colon" and c == ":":
                self._emit(frame.path, ": ")
                frame.state = "value"
            elif state == "comma_or_end" and c == ",":
                self._emit(frame.path, ", ")
                frame.state = "key"
            elif state == "value":
                self._start_value(c, frame.child_path())
            else:
                raise JsonStreamError(f"unexpected {c!r} in an object (expecting {state})")
        else:
            if c == "]" and state in ("value_or_end", "comma_or_end"):
                self._close(frame)
            elif state == "comma_or_end" and c == ",":
                self._emit(frame.path, ", ")
                frame.index += 1
                frame.state = "value"
            elif state in ("value_or_end", "value"):
                self._start_value(c, frame.child_path())
            else:
                raise JsonStreamError(f"unexpected {c!r} in an array (expecting {state})")

    def _open(self, c: str, path: Path) -> None:
        self._stack.append(_Frame(kind=c, path=path, state="key_or_end" if c == "{" else "value_or_end"))
        self._emit(path, c)

    def _close(self, frame: _Frame) -> None:
        self._stack.pop()
        self._emit(frame.path, "}" if frame.kind == "{" else "]")
        self._value_done(frame.path)

    def _start_value(self, c: str, path: Path) -> None:
        if c in "{[":
            self._open(c, path)
            return
        self._token_path = path
        if c == '"':
            self._token = "str"
            self._emit(path, '"')
        elif c == "-" or c.isdigit() and c.isascii():
            self._token, self._buf = "num", c
        elif c in "tfnNI":
            self._token, self._buf = "lit", ""
            self._literal_char(c)
        else:
            raise JsonStreamError(f"unexpected {c!r} where a value should start")

    def _finish_number(self) -> None:
        if not _NUMBER.fullmatch(self._buf):
            raise JsonStreamError(f"bad number {self._buf!r}")
        self._token = None
        self._emit(self._token_path, json.dumps(json.loads(self._buf)))
        self._value_done(self._token_path)

    def _literal_char(self, c: str) -> None:
        self._buf += c
        if not any(lit.startswith(self._buf) for lit in _LITERALS):
            raise JsonStreamError(f"bad literal {self._buf!r}")
        if self._buf in _LITERALS:  # no literal is a proper prefix of another
            self._token = None
            self._emit(self._token_path, self._buf)
            self._value_done(self._token_path)

    # -- strings ---------------------------------------------------------------------------
    def _string_char(self, c: str) -> None:
        if self._escape is not None:
            self._escape_char(c)
        elif c == "\\":
            self._escape = "\\"   # a pending high surrogate waits: a low one may follow
        elif c == '"':
            self._flush_high_surrogate()
            self._end_string()
        elif ord(c) < 0x20:
            raise JsonStreamError(f"raw control character {c!r} in a string")
        else:
            self._flush_high_surrogate()
            self._decoded_char(c)

    def _escape_char(self, c: str) -> None:
        self._escape += c
        if len(self._escape) == 2:
            if c == "u":
                return
            if c not in _SIMPLE_ESCAPES:
                raise JsonStreamError(f"bad escape {self._escape!r}")
            self._escape = None
            self._flush_high_surrogate()
            self._decoded_char(_SIMPLE_ESCAPES[c])
            return
        if c not in _HEX:
            raise JsonStreamError(f"bad unicode escape {self._escape!r}")
        if len(self._escape) < 6:
            return
        code = int(self._escape[2:], 16)
        self._escape = None
        if self._high_surrogate is not None and 0xDC00 <= code <= 0xDFFF:
            high, self._high_surrogate = self._high_surrogate, None
            self._decoded_char(chr(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00)))
            return
        self._flush_high_surrogate()
        if 0xD800 <= code <= 0xDBFF:
            self._high_surrogate = code
        else:
            self._decoded_char(chr(code))

    def _flush_high_surrogate(self) -> None:
        if self._high_surrogate is not None:  # a lone high surrogate stays one character, as in json.loads
            code, self._high_surrogate = self._high_surrogate, None
            self._decoded_char(chr(code))

    def _decoded_char(self, ch: str) -> None:
        text = json.dumps(ch, ensure_ascii=False)[1:-1]
        if self._token == "key":
            self._buf += ch
            self._emit(self._stack[-1].path, text)
        else:
            self._emit(self._token_path, text)

    def _end_string(self) -> None:
        if self._token == "key":
            frame = self._stack[-1]
            self._emit(frame.path, '"')
            frame.key, frame.state = self._buf, "colon"
            self._token, self._buf = None, ""
        else:
            self._token = None
            self._emit(self._token_path, '"')
            self._value_done(self._token_path)
