"""TorchServe as the workers use it: keys that renew themselves, the version a job pins, one piece's request.

TorchServe's inference and management keys expire (60 minutes by default, ``token_expiration_min``); its API
key does not, and renews either (``POST /token?type=...``), after which the new key is in ``key_file.json``.
:class:`TorchServeKeys` renews a key a few minutes before it expires and whenever TorchServe refuses it, under a
file lock, and re-reads the file first: another worker may have renewed it already. So a worker that has run
for hours still scores, and two workers never keep invalidating each other's keys.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from deepfake_detector.sampling import SAMPLING_HEADER, Sampling

logger = logging.getLogger(__name__)
RENEW_BEFORE_S = 300.0
KINDS = ("inference", "management")


class TorchServeBusy(RuntimeError):
    """TorchServe could not take the request now (503, unreachable, timed out): retry later."""


class PieceRefused(RuntimeError):
    """TorchServe answered the piece with an error that retrying will not change; ``error`` is its JSON."""

    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {error.get('message', error)}")
        self.status = status
        self.error = error


@dataclass
class _Key:
    value: str
    expires_at: float


class TorchServeKeys:
    """The inference and management keys in one TorchServe's key file, renewed before they expire."""

    def __init__(self, key_file: Path, management_url: str, renew_before_s: float = RENEW_BEFORE_S) -> None:
        self.key_file = Path(key_file)
        self.management_url = management_url.rstrip("/")
        self.renew_before_s = renew_before_s
        self.renewals = 0
        self._keys: dict[str, _Key] = {}

    def get(self, kind: str) -> str:
        """The current key of ``kind``, renewed first when it expires within ``renew_before_s``."""
        key = self._keys.get(kind) or self._read()[kind]
        if key.expires_at - time.time() < self.renew_before_s:
            key = self._renew(kind, stale=None)
        return key.value

    def refused(self, kind: str, value: str) -> None:
        """TorchServe refused ``value``: take the file's newer key, or renew when the file still holds it."""
        self._renew(kind, stale=value)

    def _read(self) -> dict[str, _Key]:
        try:
            data = json.loads(self.key_file.read_text())
            self._keys = {kind: _Key(data[kind]["key"], _expiry(data[kind].get("expiration time"))) for kind in KINDS}
            self._api_key = data["API"]["key"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise TorchServeBusy(f"no TorchServe keys in {self.key_file} ({type(error).__name__}): is TorchServe "
                                 "running from that folder?") from error
        return self._keys

    def _renew(self, kind: str, stale: str | None) -> _Key:
        with _locked(self.key_file.with_name(self.key_file.name + ".lock")):
            current = self._read()[kind]
            fresh = current.expires_at - time.time() >= self.renew_before_s
            if (stale is None and fresh) or (stale is not None and current.value != stale):
                return current  # renewed meanwhile (by another worker), or never stale
            try:
                answer = requests.post(f"{self.management_url}/token", params={"type": kind},
                                       headers={"Authorization": f"Bearer {self._api_key}"}, timeout=30)
            except requests.RequestException as error:
                raise TorchServeBusy(f"renewing the {kind} key: {type(error).__name__}") from error
            if answer.status_code != 200:
                raise TorchServeBusy(f"renewing the {kind} key: HTTP {answer.status_code}")
            for _ in range(100):  # the frontend rewrites key_file.json as it answers
                renewed = self._read()[kind]
                if renewed.value != current.value:
                    break
                time.sleep(0.05)
            else:
                raise TorchServeBusy(f"renewed the {kind} key, but {self.key_file} still holds the old one")
            self.renewals += 1
            logger.info("renewed TorchServe's %s key (the old one %s)", kind,
                        "was refused" if stale else "was about to expire")
            return renewed


class TorchServe:
    """The calls a worker makes: the model's default version (a job pins it) and scoring one piece."""

    def __init__(self, inference_url: str, management_url: str, key_file: Path, timeout_s: float,
                 renew_before_s: float = RENEW_BEFORE_S) -> None:
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.keys = TorchServeKeys(key_file, management_url, renew_before_s)
        self.timeout_s = timeout_s
        self.session = requests.Session()

    def default_version(self, model: str) -> str:
        """The version ``/predictions/MODEL`` answers with now."""
        answer = self._call("management", "GET", f"{self.management_url}/models/{model}")
        if answer.status_code != 200:
            raise PieceRefused(answer.status_code, _error_of(answer))
        try:
            return str(answer.json()[0]["modelVersion"])
        except (ValueError, LookupError, TypeError) as error:
            raise PieceRefused(200, {"code": "bad_answer", "message": f"GET /models/{model}: {error!r}"}) from error

    def score(self, model: str, version: str, piece: Path, sampling: Sampling) -> dict[str, Any]:
        """The verdict for one piece, scored by exactly ``version``."""
        answer = self._call("inference", "POST", f"{self.inference_url}/predictions/{model}/{version}",
                            data=piece.read_bytes(), headers={"Content-Type": "application/octet-stream",
                                                              SAMPLING_HEADER: str(sampling)})
        if answer.status_code == 200:
            try:
                return answer.json()
            except ValueError as error:
                raise PieceRefused(200, {"code": "bad_answer", "message": f"not JSON: {answer.text[:200]}"}) from error
        if answer.status_code in (502, 503, 504, 507):
            raise TorchServeBusy(f"TorchServe answered {answer.status_code} for {piece.name}")
        raise PieceRefused(answer.status_code, _error_of(answer))

    def _call(self, kind: str, method: str, url: str, headers: dict[str, str] | None = None, **options: Any
              ) -> requests.Response:
        for attempt in range(2):
            key = self.keys.get(kind)
            try:
                answer = self.session.request(method, url, headers={**(headers or {}),
                                                                   "Authorization": f"Bearer {key}"},
                                              timeout=self.timeout_s, **options)
            except requests.RequestException as error:
                raise TorchServeBusy(f"{method} {url}: {type(error).__name__}") from error
            if not _is_key_refusal(answer):
                return answer
            if attempt:  # refused twice: a renewal elsewhere raced ours; the task retries later
                raise TorchServeBusy(f"TorchServe refused its {kind} key twice")
            self.keys.refused(kind, key)
        return answer


def _is_key_refusal(answer: requests.Response) -> bool:
    if answer.status_code == 401:
        return True
    return answer.status_code == 400 and _error_of(answer).get("type") == "InvalidKeyException"


def _error_of(answer: requests.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    return {"code": "torchserve_error", "message": answer.text.strip()[:500] or f"HTTP {answer.status_code}"}


def _expiry(text: str | None) -> float:
    """TorchServe's ``2026-12-01T17:04:41.586898916Z`` (nanoseconds) as a Unix time; no expiry: far away."""
    if not text:
        return float("inf")
    whole, _, fraction = text.rstrip("Z").partition(".")
    moment = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.timezone.utc)
    return moment.timestamp() + float(f"0.{fraction or 0}")


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
