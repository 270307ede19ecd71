"""The job API: submit a video, follow its progress, read its timeline, cancel it.

    POST   /jobs                 the video as the body (octet-stream) or a multipart 'file' field -> 202 + id
    GET    /jobs/{id}            state, progress, the pinned model version, the timeline so far
    GET    /jobs/{id}/result     the verdict (the schema of a synchronous video answer), once done
    DELETE /jobs/{id}            cancel
    GET    /metrics              Prometheus text (no key, like TorchServe's metrics listener)
    GET    /healthz              200 when Redis answers

FastAPI on uvicorn: asynchronous request bodies let an upload stream to disk while other requests are served,
and it is the standard Python choice for a small JSON API. Every route but the last two needs
``Authorization: Bearer <key>`` (``keys``); a job is visible to the key that made it and to no other (another
key gets the same 404 as a job that does not exist). An upload is sniffed and its video indexed, within the
job limits, before a job exists: a bad upload gets its 4xx at once and nothing is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from deepfake_detector.errors import InputError
from deepfake_detector.media import index_video, sniff_format
from deepfake_detector.sampling import parse_sampling
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import merge, metrics, tasks, webhooks
from .keys import ApiKey, KeyRing, ensure_key_file
from .store import ACTIVE, ENDED, Job, JobStore
from .uploads import UploadError, receive
from .video import plan_video

settings = tasks.settings
logger = logging.getLogger(__name__)
SWEEP_EVERY_S = 600.0
JOB_ID = re.compile(r"[0-9a-f]{32}")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.body = status, {"code": code, "message": message, **extra}


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings.uploads.mkdir(parents=True, exist_ok=True, mode=0o700)
    app.state.keys = ensure_key_file(settings.key_file)
    app.state.store = JobStore(settings.redis_url)
    sweeper = asyncio.create_task(_sweep_forever(app.state.store))
    yield
    sweeper.cancel()


app = FastAPI(title="Deepfake detector jobs", lifespan=lifespan, docs_url=None, redoc_url=None)


@app.exception_handler(ApiError)
async def _api_error(_: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(error.body, status_code=error.status)


@app.exception_handler(Exception)
async def _internal_error(_: Request, error: Exception) -> JSONResponse:
    logger.exception("the job API failed")
    return JSONResponse({"code": "internal_error", "message": type(error).__name__}, status_code=500)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"code": "not_found" if error.status_code == 404 else "http_error",
                         "message": str(error.detail)}, status_code=error.status_code)


def authorized(request: Request) -> ApiKey:
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    keys: KeyRing = request.app.state.keys
    key = keys.owner(presented.strip()) if scheme.lower() == "bearer" and presented.strip() else None
    if key is None:
        raise ApiError(401, "unauthorized", f"send Authorization: Bearer <key>; the keys are in {settings.key_file} "
                       "(python -m deepfake_jobs.keys list)")
    return key


Owner = Annotated[ApiKey, Depends(authorized)]


def _store(request: Request) -> JobStore:
    return request.app.state.store


@app.post("/jobs", status_code=202)
async def submit(request: Request, key: Owner, sampling: str | None = None,
                 webhook_url: str | None = None) -> JSONResponse:
    store = _store(request)
    job_id = store.new_id()
    folder = tasks.job_folder(job_id)
    folder.mkdir(mode=0o700, parents=True)
    try:
        upload = await receive(request.stream(), request.headers.get("content-type", ""),
                               request.headers.get("content-length"), folder / "upload", settings.max_upload_bytes)
        chosen = parse_sampling(upload.fields.get("sampling") or sampling or settings.sampling)
        webhook = upload.fields.get("webhook_url") or webhook_url
        if webhook and not webhooks.allowed(webhook, settings.allowed_webhooks):
            raise ApiError(400, "webhook_not_allowed", "the webhook URL is not in the service's allow-list "
                           "(DEEPFAKE_JOBS_WEBHOOK_ALLOWLIST)")
        sniffed = sniff_format(upload.head)
        if sniffed is None or sniffed[0] != "video":
            raise ApiError(415, "not_a_video", "jobs take videos (mp4, mov, avi, mkv, webm); send photos and short "
                           "clips to TorchServe's /predictions")
        path = upload.path.rename(folder / f"upload.{sniffed[1]}")
        video = await run_in_threadpool(index_video, path, sniffed[1], settings.planning())
        plan_video(video, chosen, settings.planning())  # what the worker will plan: refused now, not later
    except UploadError as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise ApiError(error.status, error.code, error.message) from None
    except InputError as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise ApiError(error.status, error.code, error.detail) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    store.create(job_id, key.id, path=str(path), format=sniffed[1], bytes=upload.bytes, sampling=str(chosen),
                 model=settings.model, webhook_url=webhook, duration_s=round(video.frames.duration_s, 3),
                 frames_total=len(video.frames))
    try:
        tasks.plan_job.delay(job_id)
    except Exception as error:  # the broker is down: the job must not wait for a task that was never sent
        tasks.fail(job_id, {"code": "queue_unavailable", "message": f"the job could not be queued ({error})"})
        raise ApiError(503, "queue_unavailable", "the job queue is unavailable; retry shortly",
                       retryable=True) from None
    url = f"/jobs/{job_id}"
    return JSONResponse({"id": job_id, "state": "queued", "url": url}, status_code=202, headers={"Location": url})


def _owned(request: Request, job_id: str, key: ApiKey) -> Job:
    return _check_owner(_store(request).get(job_id) if JOB_ID.fullmatch(job_id) else None, job_id, key)


def _check_owner(job: Job | None, job_id: str, key: ApiKey) -> Job:
    if job is None or job.owner != key.id:
        raise ApiError(404, "not_found", f"no job {job_id} for this key (jobs expire "
                       f"{settings.retention_s} s after they end)")
    return job


@app.get("/jobs/{job_id}")
def status(job_id: str, request: Request, key: Owner) -> dict[str, Any]:
    job, pieces = _store(request).get_with_pieces(job_id) if JOB_ID.fullmatch(job_id) else (None, {})
    _check_owner(job, job_id, key)  # one read: the progress and the timeline agree
    return {
        "id": job.id, "state": job.state,
        "queued_at": _time(job.get("queued_at")), "started_at": _time(job.get("running_at")),
        "ended_at": _time(next((job.get(f"{state}_at") for state in ENDED if job.get(f"{state}_at")), None)),
        "sampling": job.get("sampling"),
        "model": {"name": job.get("model"), "version": job.get("model_version")},
        "media": {"format": job.get("format"), "bytes": job.number("bytes"),
                  "duration_s": float(job.get("duration_s") or 0), "frames_total": job.number("frames_total")},
        "progress": {"frames_done": job.number("samples_done"), "frames_total": job.number("samples_total"),
                     "pieces_done": job.number("pieces_done"), "pieces_total": job.number("pieces_total")},
        "timeline": merge.partial_timeline(pieces[n] for n in sorted(pieces)),
        "error": job.get("error"),
        "result_url": f"/jobs/{job_id}/result" if job.state == "done" else None,
    }


@app.get("/jobs/{job_id}/result")
def result(job_id: str, request: Request, key: Owner) -> dict[str, Any]:
    job = _owned(request, job_id, key)
    if job.state != "done":
        raise ApiError(409, "not_done", f"job {job_id} is {job.state}", state=job.state, error=job.get("error"))
    return job.get("result")


@app.delete("/jobs/{job_id}")
def cancel(job_id: str, request: Request, key: Owner) -> dict[str, Any]:
    job = _owned(request, job_id, key)
    store = _store(request)
    if store.transition(job_id, "cancelled", ACTIVE) is None:
        raise ApiError(409, "already_ended", f"job {job_id} already ended ({store.get(job_id).state})")
    tasks.ended(job_id)
    return {"id": job.id, "state": "cancelled"}


@app.get("/metrics", response_class=PlainTextResponse)
def prometheus(request: Request) -> str:
    return metrics.render(_store(request), tasks.QUEUE)


@app.get("/healthz")
def healthz(request: Request) -> JSONResponse:
    try:
        _store(request).redis.ping()
    except Exception as error:
        return JSONResponse({"status": "unavailable", "reason": type(error).__name__}, status_code=503)
    return JSONResponse({"status": "ok"})


def sweep(store: JobStore, now: float | None = None) -> list[str]:
    """Remove upload folders left without an active job (a record expired, an upload abandoned) for longer than
    the retention time; returns their names."""
    removed = []
    now = time.time() if now is None else now
    for folder in settings.uploads.iterdir() if settings.uploads.is_dir() else []:
        job = store.get(folder.name)
        if (job is None or job.state in ENDED) and now - folder.stat().st_mtime > settings.retention_s:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def revive_stalled(store: JobStore) -> list[str]:
    """Send the missing pieces of running jobs that stalled (``JobSettings.stall_s``) again."""
    stalled = store.stalled(settings.stall_s)
    for job_id in stalled:
        tasks.revive_job.delay(job_id)
    return stalled


async def _sweep_forever(store: JobStore) -> None:
    """The API's housekeeping: stalled jobs revived, abandoned uploads removed."""
    elapsed = SWEEP_EVERY_S
    every = max(1.0, min(SWEEP_EVERY_S, settings.stall_s / 3))
    while True:
        with contextlib.suppress(Exception):
            await run_in_threadpool(revive_stalled, store)
            if elapsed >= SWEEP_EVERY_S:
                await run_in_threadpool(sweep, store)
                elapsed = 0.0
        await asyncio.sleep(every)
        elapsed += every


def _time(value: str | None) -> float | None:
    return float(value) if value else None
