"""An audit trail of verdicts: one JSON line per scored or refused request, in a rotating file.

Each line says who asked (the server's request id; behind the fleet's gateway also the client's key name and
the ``X-Request-Id`` the gateway logged), what was sent (the sha256 and size of the body, its
media type) and what was answered (verdict or error, fake probability, model version, latency). The raw
media is never written: the hash is enough to match a complaint to a file the complainant still holds.
Where the file goes is a deployment concern, so it is read from the environment, not from the archive:

    DEEPFAKE_AUDIT_LOG        path of the file ("off" disables it; default: $LOG_LOCATION/audit.log)
    DEEPFAKE_AUDIT_MAX_BYTES  rotate when the file would grow past this (default 50 MiB)
    DEEPFAKE_AUDIT_BACKUPS    rotated files kept: audit.log.1 ... audit.log.N (default 10)
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .errors import RequestError
from .verdict import Verdict

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_BACKUPS = 10


@dataclass(frozen=True)
class AuditSettings:
    """Where the audit trail goes and how much of it is kept; ``path=None`` disables it."""

    path: Path | None
    max_bytes: int = DEFAULT_MAX_BYTES
    backups: int = DEFAULT_BACKUPS

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> AuditSettings:
        environ = os.environ if environ is None else environ
        raw = environ.get("DEEPFAKE_AUDIT_LOG", "").strip()
        if raw.lower() in ("off", "none", "0", "false"):
            path = None
        elif raw:
            path = Path(raw)
        else:
            path = Path(environ.get("LOG_LOCATION") or "logs") / "audit.log"
        return cls(
            path=path,
            max_bytes=int(environ.get("DEEPFAKE_AUDIT_MAX_BYTES") or DEFAULT_MAX_BYTES),
            backups=int(environ.get("DEEPFAKE_AUDIT_BACKUPS") or DEFAULT_BACKUPS),
        )


class AuditLog:
    """Appends audit records as JSON lines and rotates the file by size, safely across worker processes.

    Every worker of a version appends to the same file. Each write holds an exclusive ``flock`` on a lock
    file beside it, reopens the file if another worker has rotated it since, rotates it itself when the line
    would take it past ``max_bytes``, and appends the whole line: no line is interleaved, split or written to
    a file that was already rotated away.
    """

    def __init__(self, settings: AuditSettings) -> None:
        self.settings = settings
        self._stream: TextIO | None = None
        self._lock: TextIO | None = None
        if settings.path is None:
            return
        settings.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(settings.path.with_name(settings.path.name + ".lock"), "a")  # noqa: SIM115
        self._stream = self._open()

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def write(self, record: Mapping[str, Any]) -> None:
        if self._stream is None or self._lock is None:
            return
        line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            if self._rotated_elsewhere():
                self._stream.close()
                self._stream = self._open()
            size = os.fstat(self._stream.fileno()).st_size  # the other workers' lines included
            if size and size + len(line.encode()) > self.settings.max_bytes:
                self._rotate()
            self._stream.write(line)
            self._stream.flush()
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def close(self) -> None:
        for handle in (self._stream, self._lock):
            if handle is not None:
                handle.close()
        self._stream = self._lock = None

    def _open(self) -> TextIO:
        assert self.settings.path is not None
        return open(self.settings.path, "a", encoding="utf-8")

    def _rotated_elsewhere(self) -> bool:
        assert self._stream is not None and self.settings.path is not None
        try:
            return os.stat(self.settings.path).st_ino != os.fstat(self._stream.fileno()).st_ino
        except FileNotFoundError:
            return True

    def _rotate(self) -> None:
        """audit.log -> audit.log.1 -> ... -> audit.log.N (the oldest is dropped), then a fresh audit.log."""
        assert self._stream is not None and self.settings.path is not None
        self._stream.close()
        path = self.settings.path
        if self.settings.backups > 0:
            for number in range(self.settings.backups - 1, 0, -1):
                older = path.with_name(f"{path.name}.{number}")
                if older.exists():
                    older.replace(path.with_name(f"{path.name}.{number + 1}"))
            path.replace(path.with_name(f"{path.name}.1"))
        else:
            path.unlink(missing_ok=True)
        self._stream = self._open()


TRACE_TOKEN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
"""What a header-given id or client name must look like to be written (no log injection)."""


def trace_token(value: str | None) -> str | None:
    """A header's id or name when it is a plain token, else None."""
    return value if value is not None and TRACE_TOKEN.match(value) else None


def audit_record(
    request_id: str | None,
    body: bytes | None,
    outcome: Verdict | RequestError,
    model_version: str,
    latency_ms: float,
    x_request_id: str | None = None,
    client: str | None = None,
) -> dict[str, Any]:
    """The audit line for one request: its verdict, or the error it was refused with."""
    verdict = outcome if isinstance(outcome, Verdict) else None
    record: dict[str, Any] = {
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": request_id,
        "x_request_id": trace_token(x_request_id),
        "client": trace_token(client),
        "sha256": hashlib.sha256(body).hexdigest() if body is not None else None,
        "bytes": len(body) if body is not None else 0,
        "media_type": verdict.media.type if verdict else None,
        "media_format": verdict.media.format if verdict else None,
        "status": outcome.status if isinstance(outcome, RequestError) else 200,
        "verdict": verdict.label if verdict else None,
        "fake_probability": verdict.fake_probability if verdict else None,
        "face_detected": verdict.face_detected if verdict else None,
        "model_version": model_version,
        "latency_ms": round(latency_ms, 1),
    }
    if isinstance(outcome, RequestError):
        record["error"] = outcome.code
    return record
