"""Structured logging: one JSON object per line, so every process's logs can be joined."""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self._process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "process": self._process_name,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


_QUIET_LIBRARIES = ("aiokafka", "kafka", "faust", "mode", "uvicorn.access", "httpx", "httpcore")


def logging_config(process_name: str, level: str = "INFO") -> dict[str, Any]:
    """A dictConfig for JSON lines on stderr; also handed to faust, which configures its own."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter, "process_name": process_name}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {name: {"level": "WARNING"} for name in _QUIET_LIBRARIES},
    }


def configure_logging(process_name: str, level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines, replacing other handlers."""
    logging.config.dictConfig(logging_config(process_name, level))
