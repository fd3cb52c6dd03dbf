"""Log lines for operators: the stdlib ``logging``, with fields passed as ``extra=``, one formatter per format.

The engine logs an event as a short constant message plus fields (``log.info("connection closed",
extra={"remote": ..., "code": 4003, ...})``); this module decides how a line looks:

- ``text`` (the default): ``2026-12-01 09:37:32,123 INFO roost.connection: connection closed remote=...
  code=4003``, the fields as ``key=value`` behind the message;
- ``json``: one JSON object per line, ``{"ts", "level", "logger", "msg", ...fields}`` (and ``exc``, the
  traceback, when there is one), for log shippers.

Traps: a field's value may come from a peer (a user id, a room id an unauthenticated request named),
so every field is made one bounded line here, in one place: in text a value that is not a plain word
is JSON-quoted (a newline cannot forge a second log line), and strings are cut at
:data:`MAX_FIELD_CHARS`. A field name must not be one of ``LogRecord``'s own attributes (``name``,
``msg``, ``args``...): ``logging`` raises ``KeyError`` for those.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
from typing import Any

__all__ = ["FORMATS", "JsonFormatter", "TextFormatter", "configure", "fields"]

FORMATS = ("text", "json")

MAX_FIELD_CHARS = 256
"""Longest string field value logged (longer ones are cut and end with ``…``)."""

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_BARE = re.compile(r"[A-Za-z0-9_.:/@+\-]+")


def _bounded(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return value[: MAX_FIELD_CHARS - 1] + "…"
    if isinstance(value, float):
        return round(value, 3)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return _bounded(str(value))


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of ``record``, bounded, in the order they were given."""
    return {key: _bounded(value) for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_")}


def _text_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``asctime LEVEL logger: message key=value ...`` (the traceback, if any, on the lines below)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - the stdlib's name
        line = super().formatMessage(record)
        extra = fields(record)
        if not extra:
            return line
        return line + " " + " ".join(f"{key}={_text_value(value)}" for key, value in extra.items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601, ms), ``level``, ``logger``, ``msg``, the fields."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        line: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in fields(record).items():
            line.setdefault(key, value)  # a field never replaces ts, level, logger or msg
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def configure(level: str = "info", log_format: str = "text", *, context: dict[str, Any] | None = None) -> None:
    """Send every log record at ``level`` and above to stderr in ``log_format`` (``roost serve``);
    ``context``: fields every line carries (a worker of ``--workers`` says which it is)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    if context:
        def add_context(record: logging.LogRecord) -> bool:
            for key, value in context.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
            return True

        handler.addFilter(add_context)
    logging.basicConfig(level=level.upper(), handlers=[handler])
