"""Structured logging for the daemon: human text or one JSON object per line.

``configure_logging("json")`` makes every record a single line such as::

    {"ts":"2024-05-01T12:00:00.123Z","level":"info","logger":"overlayd.server",
     "msg":"serving on /run/x.sock","socket":"/run/x.sock"}

Fields passed with ``extra={...}`` appear beside ``msg`` (in text mode as
``key=value`` after the message). Values of fields whose name says they hold a
secret (``private_key``, ``secret``, ``password``, ``token``) and any
WireGuard-private-key-looking text inside them are replaced by ``<redacted>``:
private keys never reach a log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any
from typing import Final
from typing import Literal
from typing import TextIO

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging"]

#: Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}

_SECRET_WORDS: Final = ("private_key", "privatekey", "secret", "password", "token")
_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(record).items():
        if key in _STANDARD or key.startswith("_"):
            continue
        out[key] = "<redacted>" if _is_secret(key) else value
    return out


def _timestamp(record: logging.LogRecord) -> str:
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{base}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One compact JSON object per record: ts, level, logger, msg, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            data.setdefault(key, value)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, separators=(",", ":"), default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2024-05-01T12:00:00.123Z INFO overlayd.server: message key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(
    log_format: Literal["text", "json"] = "text",
    level: str = "info",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every ``overlayd*`` logger (and the root) to ``stream`` (stderr) in ``log_format``.

    Replaces handlers this function installed earlier, so calling it twice is safe.
    Returns the installed handler.
    """
    if level not in _LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(_LEVELS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.set_name("overlayd")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "overlayd":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    return handler
