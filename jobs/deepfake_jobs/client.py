"""What ``scripts/score.py`` uses: photos and short videos to TorchServe directly, long videos as jobs.

TorchServe takes a body of at most 64 MiB and gives up on a batch after 120 s, so a long video goes to the job
service instead (:class:`JobClient`: upload once, poll the progress, fetch the verdict); :func:`route` decides
from the file alone (its first bytes, its size, and its duration from the container's header, without decoding
a frame). Both answers are the same verdict JSON (``deepfake_detector.verdict``). Every refusal becomes one
line: :class:`ApiError` (``JobApiError`` from the job API, ``PredictionError`` from TorchServe), and a job that
ends without a verdict raises :class:`JobFailed` with the job's own error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Literal

import av
import requests
from deepfake_detector.archive import DEFAULT_MODEL_NAME
from deepfake_detector.config import PipelineSettings
from deepfake_detector.media import DEMUXERS, FFMPEG_OPTIONS, sniff_format

from .keys import DEFAULT_KEY_NAME, KeyRing
from .settings import JobSettings
from .store import ENDED

Route = Literal["direct", "job"]
KEY_ENV = "DEEPFAKE_JOBS_KEY"
"""The job API key from the environment wins over the key file (a job service started elsewhere)."""
DIRECT_MAX_BYTES = PipelineSettings().max_bytes
"""The server's ``handler.max_bytes`` (64 MiB): larger bodies are refused with 413."""
DIRECT_MAX_SECONDS = 60.0
"""Longer videos go as jobs: a request scores at most ``max_frames`` (64) samples, more than a second apart past
a minute, while a job scores one frame a second over any length and has no 120 s batch timeout."""
DIRECT_TIMEOUT_S = 150.0
"""Above TorchServe's ``responseTimeout`` (120 s), so its own answer arrives before ours gives up."""
SNIFF_BYTES = 64


class ClientError(RuntimeError):
    """Scoring a file failed; the message is one line saying what failed and what to do."""


class ApiError(ClientError):
    """A service refused a call (``status`` None: it could not be reached); ``code`` is its error code."""

    service = "the service"

    def __init__(self, status: int | None, code: str, message: str) -> None:
        self.status, self.code, self.message = status, code, " ".join(str(message).split())
        super().__init__(f"{self.service}: HTTP {status} {code}: {self.message}" if status is not None
                         else f"{self.service}: {code}: {self.message}")


class JobApiError(ApiError):
    """The job API refused a call (its ``{"code", "message"}`` body)."""

    service = "job API"


class PredictionError(ApiError):
    """TorchServe refused a direct request (the detector's ``{"error", "detail"}`` body, or TorchServe's own)."""

    service = "TorchServe"


class JobFailed(ClientError):
    """A job ended failed or cancelled; ``job`` is its last status, ``code``/``message`` its error."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        error = job.get("error") or {}
        error = error if isinstance(error, dict) else {"message": error}
        self.code = str(error.get("code") or job.get("state"))
        self.message = str(error.get("message") or "no detail")
        super().__init__(f"job {job.get('id')} {job.get('state')}: {self.code}: {self.message}")


class JobTimeout(ClientError):
    """A job did not end within the wait; it is still running and can be fetched later by its id."""


def _refusal(error_type: type[ApiError], answer: requests.Response, action: str) -> ApiError:
    """One :class:`ApiError` from any error body: ``{"code","message"}`` (the job API), ``{"error","detail"}``
    (the detector), ``{"code","type","message"}`` (TorchServe), FastAPI's ``{"detail"}``, or text."""
    try:
        body = answer.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return error_type(answer.status_code, "http_error", f"{action}: {answer.text.strip()[:300] or 'no detail'}")
    if isinstance(body.get("error"), str):  # the detector's; the job API's 409 carries a job's error object
        code, message = body["error"], body.get("detail")
    else:
        code = body.get("code") if isinstance(body.get("code"), str) else body.get("type") or body.get("code")
        message = body.get("message", body.get("detail"))
    if isinstance(message, list):  # FastAPI's validation errors
        message = "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in message)
    return error_type(answer.status_code, str(code or "http_error"), f"{action}: {message or 'no detail'}")


# ------------------------------------------------------------------------------------------------ routing


def media_duration_s(path: Path, fmt: str) -> float | None:
    """A video's duration from its container's header (or its stream's), without decoding; None if unknown."""
    try:
        with av.open(str(path), format=DEMUXERS[fmt], options=dict(FFMPEG_OPTIONS)) as container:
            if container.duration:
                return container.duration / av.time_base
            stream = container.streams.video[0] if container.streams.video else None
            if stream is not None and stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
    except (av.error.FFmpegError, UnicodeDecodeError):
        pass
    return None


def route(path: Path, max_direct_bytes: int = DIRECT_MAX_BYTES, max_direct_seconds: float = DIRECT_MAX_SECONDS
          ) -> Route:
    """``direct`` (TorchServe) or ``job``: a video larger than ``max_direct_bytes`` or longer than
    ``max_direct_seconds`` goes as a job; photos, short videos and what is neither go direct, where the server
    gives its own answer (its 413 for an oversized photo, its 415 for an unknown format)."""
    path = Path(path)
    with open(path, "rb") as handle:
        sniffed = sniff_format(handle.read(SNIFF_BYTES))
    if sniffed is None or sniffed[0] != "video":
        return "direct"
    if path.stat().st_size > max_direct_bytes:
        return "job"
    duration = media_duration_s(path, sniffed[1])
    return "job" if duration is not None and duration > max_direct_seconds else "direct"


# ------------------------------------------------------------------------------------------------- direct


class DirectClient:
    """Synchronous requests to TorchServe's ``/predictions/MODEL``; ``token`` may be a callable, so a key
    renewed in TorchServe's key file during a long run is read afresh for every request."""

    def __init__(self, inference_url: str, token: str | Callable[[], str], model: str = DEFAULT_MODEL_NAME,
                 timeout_s: float = DIRECT_TIMEOUT_S, retries: int = 2) -> None:
        self.inference_url = inference_url.rstrip("/")
        self.token = token
        self.model = model
        self.timeout_s = timeout_s
        self.retries = retries
        self.session = requests.Session()

    def score(self, path: Path, sampling: str | None = None) -> dict[str, Any]:
        """The verdict on one file, streamed from disk; a 503 (full queue, or the worker's temp space) is
        retried after its ``Retry-After``."""
        url = f"{self.inference_url}/predictions/{self.model}"
        for attempt in range(self.retries + 1):
            token = self.token() if callable(self.token) else self.token
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
            if sampling:
                headers["X-Deepfake-Sampling"] = sampling
            try:
                with open(path, "rb") as body:
                    answer = self.session.post(url, data=body, headers=headers, timeout=self.timeout_s)
            except requests.ConnectionError:
                raise PredictionError(None, "unreachable", f"no TorchServe answers at {self.inference_url}; start "
                                      "it with `make serve`, or pass --inference-url / --run-dir") from None
            except requests.Timeout:
                raise PredictionError(None, "timeout", f"no answer within {self.timeout_s:.0f} s; send long "
                                      "videos as jobs") from None
            if answer.status_code == 503 and attempt < self.retries:
                time.sleep(min(float(answer.headers.get("Retry-After") or 2 ** attempt), 30.0))
                continue
            if answer.status_code >= 300:
                raise self._refusal(answer)
            return answer.json()
        raise AssertionError("unreachable")  # the loop returns or raises

    def _refusal(self, answer: requests.Response) -> ApiError:
        error = _refusal(PredictionError, answer, f"POST /predictions/{self.model}")
        if answer.status_code == 401 or error.code == "InvalidKeyException":
            return PredictionError(answer.status_code, error.code, "the inference token was refused (wrong, or "
                                   "expired: TorchServe's keys last 60 min); use the running server's "
                                   "key_file.json (--run-dir) or set TS_INFERENCE_TOKEN")
        if answer.status_code == 413 and not answer.content:
            return PredictionError(413, "too_large", "the body is over TorchServe's max_request_size; send it "
                                   "as a job")
        return error


# ---------------------------------------------------------------------------------------------------- jobs


class _Upload:
    """A file as requests streams it (``Content-Length`` from ``len``, then ``read`` in blocks), counting blocks."""

    def __init__(self, handle: BinaryIO, size: int, on_read: Callable[[int], None]) -> None:
        self.handle, self.size, self.on_read = handle, size, on_read

    def __len__(self) -> int:
        return self.size

    def read(self, amount: int = -1) -> bytes:
        block = self.handle.read(amount)
        if block:
            self.on_read(len(block))
        return block


def job_key(key_file: Path | None = None, name: str = DEFAULT_KEY_NAME) -> str:
    """The job API key: ``DEEPFAKE_JOBS_KEY``, else the key named ``name`` in the job service's key file."""
    from_env = os.environ.get(KEY_ENV)
    if from_env:
        return from_env
    key_file = Path(key_file) if key_file is not None else JobSettings.from_env().key_file
    try:
        match = KeyRing(key_file).named(name)
    except FileNotFoundError:
        raise ClientError(f"no job API key: {key_file} does not exist (the job service makes it at first "
                          f"start: `make jobs`), or set {KEY_ENV}") from None
    except (ValueError, KeyError, TypeError):
        raise ClientError(f"{key_file} is not a job API key file; set {KEY_ENV}") from None
    if match is None:
        raise ClientError(f"{key_file} has no key named {name!r} (`python -m deepfake_jobs.keys list`); "
                          f"set {KEY_ENV}")
    return match.key


def default_jobs_url(settings: JobSettings | None = None) -> str:
    settings = settings or JobSettings.from_env()
    return f"http://{settings.api_host}:{settings.api_port}"


class JobClient:
    """The job API (``POST/GET/DELETE /jobs``) with one bearer key."""

    def __init__(self, base_url: str, key: str, timeout_s: float = 30.0, upload_timeout_s: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.upload_timeout_s = upload_timeout_s
        """Between two bytes of an upload or its answer: the API writes the upload to disk before it answers."""
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"

    def _call(self, method: str, path: str, action: str, timeout_s: float | None = None, **options: Any) -> Any:
        try:
            answer = self.session.request(method, self.base_url + path, timeout=timeout_s or self.timeout_s,
                                          **options)
        except requests.ConnectionError:
            raise JobApiError(None, "unreachable", f"{action}: no job service answers at {self.base_url}; start "
                              "it with `make jobs`, or pass --jobs-url") from None
        except requests.Timeout:
            raise JobApiError(None, "timeout", f"{action}: no answer from {self.base_url} within "
                              f"{timeout_s or self.timeout_s:.0f} s") from None
        if answer.status_code >= 300:
            raise _refusal(JobApiError, answer, action)
        return answer.json() if answer.content else None

    def submit(self, path: Path, sampling: str | None = None, webhook_url: str | None = None,
               on_upload: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Upload a video (streamed from disk, ``on_upload`` told of every block sent) as a new job; its
        ``{"id", "state", "url"}``."""
        params = {name: value for name, value in (("sampling", sampling), ("webhook_url", webhook_url)) if value}
        with open(path, "rb") as handle:
            body = handle if on_upload is None else _Upload(handle, os.fstat(handle.fileno()).st_size, on_upload)
            return self._call("POST", "/jobs", f"submit {Path(path).name}", self.upload_timeout_s, data=body,
                              params=params, headers={"Content-Type": "application/octet-stream"})

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's state, progress, partial timeline and error."""
        return self._call("GET", f"/jobs/{job_id}", f"status of job {job_id}")

    def result(self, job_id: str) -> dict[str, Any]:
        """The job's verdict (the synchronous answer's schema); 409 ``JobApiError`` until it is done."""
        return self._call("GET", f"/jobs/{job_id}/result", f"result of job {job_id}")

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        return self._call("DELETE", f"/jobs/{job_id}", f"cancel job {job_id}")

    def wait(self, job_id: str, on_progress: Callable[[dict[str, Any]], None] | None = None, poll_s: float = 1.0,
             timeout_s: float = 24 * 3600.0, unreachable_s: float = 60.0) -> dict[str, Any]:
        """Poll until the job ends and return its verdict; ``on_progress`` gets every status. A failed or
        cancelled job raises :class:`JobFailed`; the service unreachable (or failing) for ``unreachable_s`` on
        end raises its ``JobApiError`` (a restart in between is ridden out); past ``timeout_s``, JobTimeout."""
        deadline = time.monotonic() + timeout_s
        failing_since: float | None = None
        while True:
            try:
                job = self.status(job_id)
                failing_since = None
            except JobApiError as error:
                if error.status is not None and error.status < 500:
                    raise
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > unreachable_s:
                    raise
                job = None
            if job is not None:
                if on_progress is not None:
                    on_progress(job)
                if job.get("state") == "done":
                    return self.result(job_id)
                if job.get("state") in ENDED:
                    raise JobFailed(job)
            if time.monotonic() > deadline:
                raise JobTimeout(f"job {job_id} did not end within {timeout_s:.0f} s; it goes on: "
                                 f"GET {self.base_url}/jobs/{job_id}")
            time.sleep(poll_s)
