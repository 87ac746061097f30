"""Logging set-up shared by the client and the sandbox, with secrets redacted from every line."""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
from pathlib import Path

# Each pattern keeps its first group and replaces the secret after it.
_SECRET_PATTERNS = [
    re.compile(r"(\bsig=)[^&\s\"']+", re.I),
    re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]+", re.I),
    re.compile(r"(\"?(?:access_token|refresh_token|id_token|client_assertion|password|"
               r"EncryptionKey|AES256CBCKey|device_code)\"?\s*[:=]\s*\"?)[^\"&\s,}]+", re.I),
]


def redact(text: str) -> str:
    """Replace SAS signatures, bearer tokens, keys and passwords in ``text`` with ``REDACTED``."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1REDACTED", text)
    return text


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


_FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class _FileHandler(logging.FileHandler):
    """A FileHandler that skips records while its disk is full.

    logging's default prints a traceback to stderr for every record it cannot write, which would
    flood the terminal (and draw over the TUI) while the engine waits for disk space.
    """

    full_disk_errors = 0

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        error = sys.exc_info()[1]
        if isinstance(error, OSError) and error.errno in _FULL_DISK_ERRNOS:
            self.full_disk_errors += 1
            return
        super().handleError(record)

    def close(self) -> None:
        # Closing flushes what is still buffered, and on a full disk those lines are lost.
        try:
            super().close()
        except OSError as error:
            if error.errno not in _FULL_DISK_ERRNOS:
                raise
            self.full_disk_errors += 1


def configure_logging(
    *, level: int = logging.INFO, log_file: Path | None = None, stderr: bool = True
) -> None:
    """Send ``spmt.*`` records (and the Azure SDK's warnings) to stderr and/or a file."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_spmt", False):
            root.removeHandler(handler)
            handler.close()
    formatter = RedactingFormatter(LOG_FORMAT)
    handlers: list[logging.Handler] = []
    if stderr:
        handlers.append(logging.StreamHandler())
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.close(fd)
        handlers.append(_FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._spmt = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("spmt").setLevel(level)
    # The Azure SDK logs full request URLs (with SAS) at INFO; keep it at WARNING.
    logging.getLogger("azure").setLevel(logging.WARNING)
