"""An audit trail of verdicts: one JSON line per scored or refused request, in a rotating file.

Each line says who asked (the server's request id), what was sent (the sha256 and size of the body, its
media type) and what was answered (verdict or error, fake probability, model version, latency). The raw
media is never written: the hash is enough to match a complaint to a file the complainant still holds.
Where the file goes is a deployment concern, so it is read from the environment, not from the archive:

    DEEPFAKE_AUDIT_LOG        path of the file ("off" disables it; default: $LOG_LOCATION/audit.log)
    DEEPFAKE_AUDIT_MAX_BYTES  rotate when the file would grow past this (default 50 MiB)
    DEEPFAKE_AUDIT_BACKUPS    rotated files kept: audit.log.1 ... audit.log.N (default 10)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import logging.handlers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """Appends audit records as JSON lines; rotation by size via ``RotatingFileHandler``."""

    def __init__(self, settings: AuditSettings) -> None:
        self.settings = settings
        self._logger: logging.Logger | None = None
        if settings.path is None:
            return
        settings.path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            settings.path, maxBytes=settings.max_bytes, backupCount=settings.backups, encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        # A private logger that does not propagate: audit lines must not leak into the server's own log.
        self._logger = logging.getLogger(f"deepfake_detector.audit.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(handler)

    @property
    def enabled(self) -> bool:
        return self._logger is not None

    def write(self, record: Mapping[str, Any]) -> None:
        if self._logger is not None:
            self._logger.info(json.dumps(record, sort_keys=True, separators=(",", ":")))

    def close(self) -> None:
        if self._logger is not None:
            for handler in list(self._logger.handlers):
                handler.close()
                self._logger.removeHandler(handler)
            self._logger = None


def audit_record(
    request_id: str | None,
    body: bytes | None,
    outcome: Mapping[str, Any],
    status: int,
    model_version: str,
    latency_ms: float,
) -> dict[str, Any]:
    """The audit line for one request: ``outcome`` is the response body (a result or an error)."""
    media = outcome.get("media") or {}
    record: dict[str, Any] = {
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": request_id,
        "sha256": hashlib.sha256(body).hexdigest() if body is not None else None,
        "bytes": len(body) if body is not None else 0,
        "media_type": media.get("type"),
        "media_format": media.get("format"),
        "status": status,
        "verdict": outcome.get("label"),
        "fake_probability": outcome.get("fake_probability"),
        "face_detected": outcome.get("face_detected"),
        "model_version": model_version,
        "latency_ms": round(latency_ms, 1),
    }
    if "error" in outcome:
        record["error"] = outcome["error"]
    return record
