"""Logging set-up and connection-scoped loggers.

One line per event on stderr: time, level, component (the top-level package: smtp, imap,
delivery, mailstack), then `[conn peer]` for lines about a connection, then the message.
`--log-json` prints the same fields as one JSON object per line. Never log passwords or
message bodies: AUTH/LOGIN arguments appear as *** (see `redact`).
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any

_ids = itertools.count(1)
_process_tag = ""  # "w2." in SMTP worker 2: ids (and the queue ids made of them) stay unique


def new_connection_id(prefix: str) -> str:
    """Short ids ('s1', 'i7', 'w2.s5') that tie every line of one connection together."""
    return f"{_process_tag}{prefix}{next(_ids)}"


def set_process_tag(tag: str) -> None:
    global _process_tag
    _process_tag = f"{tag}." if tag else ""


class ConnectionLogger(logging.LoggerAdapter[logging.Logger]):
    """Adds the connection id and peer to each record."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra.update(self.extra or {})
        kwargs["extra"] = extra
        return msg, kwargs


def connection_logger(name: str, conn_id: str, peer: str) -> ConnectionLogger:
    return ConnectionLogger(logging.getLogger(name), {"conn": conn_id, "peer": peer})


_SECRET = re.compile(r"^(\S+\s+(?:LOGIN|AUTHENTICATE|AUTH)\b)(.*)$", re.IGNORECASE)


def redact(line: str) -> str:
    """'a1 LOGIN alice secret' -> 'a1 LOGIN ***' for transcripts at DEBUG."""
    if line.upper().startswith("AUTH "):
        return "AUTH ***"
    m = _SECRET.match(line)
    return f"{m[1]} ***" if m else line


def _component(logger_name: str) -> str:
    """The part of mailstack a line comes from: "mailstack.smtp.server" -> "smtp"."""
    parts = logger_name.split(".")
    if parts[0] == "mailstack" and len(parts) > 1:
        return parts[1]
    return parts[0]


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        component = _component(record.name)
        conn = getattr(record, "conn", None)
        where = f" [{conn} {getattr(record, 'peer', '')}]" if conn else ""
        line = f"{ts} {record.levelname} {component}{where} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname,
            "component": _component(record.name),
            "message": record.getMessage(),
        }
        for key in ("conn", "peer"):
            if (value := getattr(record, key, None)) is not None:
                data[key] = value
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data)


def current_settings() -> tuple[str, bool]:
    """(level, json_lines) as `setup_logging` set them, for child processes to copy."""
    root = logging.getLogger()
    json_lines = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return logging.getLevelName(root.level), json_lines


def setup_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    logging.logProcesses = False  # a getpid() system call per record; no format shows it
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs every connection at INFO under its own name; ours already does.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
