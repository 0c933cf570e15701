"""Log output formats shared by ``edgegw`` and ``edgegw-cloud``: text (default) or JSON lines.

In the protocol package because both sides share it (the JSON log line is a contract with the
operator's log pipeline) and it imports nothing of ours.

``--log-format json`` (or ``EDGEGW_LOG_FORMAT=json``) prints one JSON object per record, for
journald/Loki/Elasticsearch pipelines: ``{"ts": ISO-8601 UTC with ms, "level", "logger", "msg"}``
plus ``"exc"`` (the formatted traceback) when there is one and any ``extra=`` fields that are
JSON-serialisable. The message is formatted (%-args applied) before it is written.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import Any, TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                try:
                    json.dumps(value)
                except (TypeError, ValueError):
                    value = repr(value)
                doc[key] = value
        return json.dumps(doc, ensure_ascii=False)


def default_format() -> str:
    fmt = os.environ.get("EDGEGW_LOG_FORMAT", "text").lower()
    return fmt if fmt in FORMATS else "text"


def configure(
    level: int, fmt: str | None = None, stream: TextIO | None = None, *, force: bool = True
) -> bool:
    """(Re)configure the root logger: one stream handler in the chosen format. Returns True if
    it installed its handler (then the caller may add filters to it).

    ``force=False`` leaves a root logger that already has handlers alone (like
    ``logging.basicConfig``), e.g. when a host program or a test runner set logging up."""
    quiet_libraries(level)
    if not force and logging.getLogger().handlers:
        return False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter() if (fmt or default_format()) == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    return True


def quiet_libraries(level: int) -> None:
    """Libraries that are chatty at INFO: only their warnings unless we debug."""
    logging.getLogger("apscheduler").setLevel(
        logging.WARNING if level > logging.DEBUG else logging.NOTSET
    )
