"""Logging: journald with structured fields when it is there, stderr otherwise, plus an optional file.

Structured fields are passed through `extra=` with the names in FIELDS; only those reach the journal
(JournalHandler would forward every LogRecord attribute, which are not valid journal field names), so
`journalctl SYSLOG_IDENTIFIER=lipsyncd JOB_ID=...` shows one job.
Names that came from users are logged through daemon.names.escape (fields() does it for the user), so a
folder named "x<newline>CRITICAL ..." is one line with "x%0ACRITICAL ...", never a forged second line.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from daemon import names

if TYPE_CHECKING:
    from daemon.config import LoggingConfig

IDENTIFIER = "lipsyncd"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
# LogRecord attribute -> journal field.
FIELDS = {"job_id": "JOB_ID", "user": "LIPSYNC_USER", "stage": "STAGE"}
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def fields(job_id: str | None = None, user: str | None = None, stage: str | None = None) -> dict[str, str]:
    """The `extra=` mapping for a log call about one job."""
    out = {"job_id": job_id, "user": names.escape(user) if user is not None else None, "stage": stage}
    return {k: v for k, v in out.items() if v is not None}


class JournalFieldsHandler(logging.Handler):
    """Sends records to journald with MESSAGE, PRIORITY, SYSLOG_IDENTIFIER and our FIELDS only."""

    def __init__(self, identifier: str = IDENTIFIER) -> None:
        super().__init__()
        from systemd import journal  # imported here: systemd-python is optional off Linux servers

        self._send = journal.send
        self._identifier = identifier

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            extra: dict[str, Any] = {
                key: str(getattr(record, attr)) for attr, key in FIELDS.items() if getattr(record, attr, None)
            }
            self._send(
                message,
                PRIORITY=str(_PRIORITY.get(record.levelno, 6)),
                SYSLOG_IDENTIFIER=self._identifier,
                LOGGER=record.name,
                CODE_FILE=record.pathname,
                CODE_LINE=record.lineno,
                CODE_FUNC=record.funcName,
                **extra,
            )
        except Exception:  # noqa: BLE001 - logging must never take the daemon down
            self.handleError(record)


class _ContextFormatter(logging.Formatter):
    """Plain-text format that shows the job and user when a record has them."""

    def format(self, record: logging.LogRecord) -> str:
        tags = [str(getattr(record, attr)) for attr in ("job_id", "user", "stage") if getattr(record, attr, None)]
        record.context = f" [{' '.join(tags)}]" if tags else ""
        return super().format(record)


def journal_available() -> bool:
    if not os.path.exists(JOURNAL_SOCKET):
        return False
    try:
        import systemd.journal  # noqa: F401
    except ImportError:
        return False
    return True


def setup(settings: LoggingConfig | None = None, *, service: bool = False, identifier: str = IDENTIFIER) -> None:
    """Configure the root logger.

    service: a long-running process (run, worker, janitor) logs to journald when it is there and to
    stderr only when stderr is a terminal or there is no journal; CLI commands log to stderr.
    """
    level = getattr(logging, settings.level.upper(), logging.INFO) if settings else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    text = _ContextFormatter("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")

    use_journal = service and journal_available()
    if use_journal:
        handler: logging.Handler = JournalFieldsHandler(identifier)
        handler.setFormatter(_ContextFormatter("%(message)s"))
        root.addHandler(handler)
    if not use_journal or sys.stderr.isatty():
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(text if service else _ContextFormatter("%(levelname)s%(context)s: %(message)s"))
        root.addHandler(stream)
    path = settings.file if settings else None
    if path:
        # WatchedFileHandler reopens the file after logrotate moved it, so no line is lost.
        from logging.handlers import WatchedFileHandler  # only here: it pulls in socket, rarely needed

        file_handler = WatchedFileHandler(path, encoding="utf-8")
        file_handler.setFormatter(text)
        root.addHandler(file_handler)
    for noisy in ("watchdog", "huey", "numba", "urllib3", "PIL", "matplotlib", "apprise"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
