"""Log set-up for the controller's processes: one structured line per event on stderr.

Log lines are `key=value` with values a client may have sent (service, endpoint and interface
names, the errors that quote them). `FieldFormatter` passes every argument of a log call through
`field()`, so such a value can neither end the line (a newline would let a client forge a line
of its own, e.g. `... ERROR p4nsm.p4rt switch=s1 event=down`) nor pose as another key (a space or
`=` in it). Escaping happens in the formatter, not at each call: no log line can forget it, and
`record.getMessage()` (what tests and other handlers read) stays the raw text."""

from __future__ import annotations

import copy
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s %(message)s"
DATEFMT = "%H:%M:%S"

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_QUOTED = {**_SHORT, '"': '\\"', "\\": "\\\\"}


def _escape_char(c: str, table: Mapping[str, str]) -> str:
    if c in table:
        return table[c]
    if c.isprintable():
        return c
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(text: str) -> str:
    """`text` with nothing that ends a line or hides (control characters, U+2028, ...): each is
    written as its Python escape."""
    if text.isprintable():
        return text  # the common case, without a per-character walk
    return "".join(_escape_char(c, _SHORT) for c in text)


def field(value: object) -> str:
    """One log value, logfmt style: as it is when it is plain, else in quotes, with quotes,
    backslashes and what `escape` escapes escaped."""
    text = str(value)
    if text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return '"' + "".join(_escape_char(c, _QUOTED) for c in text) + '"'


class _Field:
    """A log argument as `%s` (field) and `%r` (escaped repr) print it."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return field(self.value)

    def __repr__(self) -> str:
        return escape(repr(self.value))


def _safe(arg: object) -> object:
    # Numbers stay themselves: %d and %.1f need them, and they carry no text.
    return arg if isinstance(arg, (int, float)) or arg is None else _Field(arg)


class FieldFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(FORMAT, DATEFMT)

    def format(self, record: logging.LogRecord) -> str:
        safe = copy.copy(record)  # other handlers (pytest's caplog) keep the raw record
        safe.msg = escape(str(record.msg))
        if isinstance(record.args, Mapping):
            safe.args = {k: _safe(v) for k, v in record.args.items()}
        elif record.args:
            safe.args = tuple(_safe(a) for a in record.args)
        return super().format(safe)

    def formatException(self, ei: Any) -> str:
        # Indented: a traceback's lines (its exception's message among them) never start a line
        # the way a record does.
        return "\n".join("  " + line for line in super().formatException(ei).splitlines())


class Throttle:
    """At most `per_second` lines of one kind a second: what a client can make the controller
    log at will (its refusals) must not cost it more than a few lines' worth, however fast it
    sends. `admit()` is None for a line to leave out, else how many were left out before it."""

    def __init__(self, per_second: int = 20, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self.clock = clock
        self.window = -1.0
        self.used = 0
        self.dropped = 0

    def admit(self) -> int | None:
        now = self.clock()
        if now - self.window >= 1.0:
            self.window, self.used = now, 0
        if self.used >= self.per_second:
            self.dropped += 1
            return None
        self.used += 1
        dropped, self.dropped = self.dropped, 0
        return dropped


def handler(stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing escaped lines to `stream` (default stderr)."""
    out = logging.StreamHandler(stream or sys.stderr)
    out.setFormatter(FieldFormatter())
    return out


def setup_logging(level: str = "INFO", stream: IO[str] | None = None) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler(stream)])
