"""The Celery app and its tasks: plan a job, score its pieces, finish it, call its webhook.

Reliability follows Celery's own advice for work that must not be lost: a task is acknowledged only after it
ran (``acks_late``), a worker takes one task at a time per process (prefetch 1), a task whose worker died is
requeued (``reject_on_worker_lost``) or, if the whole worker vanished, redelivered by Redis after the
visibility timeout. Every task may therefore run twice, and each is idempotent: a piece's answer is stored once
(``store.piece_done``), a job finishes once (``store.finish``), and a redelivered plan re-sends only the pieces not
done. A piece TorchServe cannot take now (503, unreachable) is retried with exponential backoff; a piece it
refuses (a corrupt stretch of the video) fails its job, with the reason, and no other job.

    celery -A deepfake_jobs.tasks worker --concurrency 2 -E -Q deepfake_jobs
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import requests
from celery import Celery, Task
from deepfake_detector.errors import InputError
from deepfake_detector.media import index_video
from deepfake_detector.sampling import parse_sampling
from deepfake_detector.verdict import Verdict, VerdictError

from . import merge, video, webhooks
from .keys import KeyRing
from .scoring import PieceRefused, TorchServe, TorchServeBusy
from .settings import JobSettings
from .store import ACTIVE, JobStore

logger = logging.getLogger(__name__)
QUEUE = "deepfake_jobs"
settings = JobSettings.from_env()

app = Celery("deepfake_jobs")
app.conf.update(
    broker_url=settings.redis_url,
    result_backend=settings.redis_url,
    # Unacknowledged tasks of a worker that vanished are looked for every few seconds (kombu's default looks
    # every 100 s), and come back once older than the visibility timeout.
    broker_transport_options={"visibility_timeout": settings.visibility_timeout_s,
                              "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 3)),
                              "unacked_restore_throttle": 1},
    result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
    result_expires=settings.retention_s,
    task_default_queue=QUEUE,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_send_task_events=True,  # Celery's event stream: `celery events`, Flower
    task_send_sent_event=True,
    task_track_started=True,
    broker_connection_retry_on_startup=True,
    worker_cancel_long_running_tasks_on_connection_loss=False,
    task_time_limit=max(120, settings.visibility_timeout_s - 60),  # stopped before Redis would redeliver it
)


@functools.cache
def store() -> JobStore:
    return JobStore(settings.redis_url)


@functools.cache
def torchserve() -> TorchServe:
    return TorchServe(settings.inference_url, settings.management_url,
                      settings.torchserve_run_dir / "key_file.json", settings.piece_timeout_s,
                      settings.key_renew_before_s)


def job_folder(job_id: str) -> Path:
    return settings.uploads / job_id


class JobTask(Task):
    """A task of one job (its first argument): whatever escapes it (retries exhausted, a bug, a Redis error) fails
    that job with the reason, so no job stays ``running`` with nobody working on it."""

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        job_id = args[0] if args else kwargs.get("job_id")
        if job_id:
            fail(job_id, {"code": "internal_error", "message": f"{self.name} failed: {type(exc).__name__}: {exc}"})


MAX_CRASHES = 3
"""Deliveries of one task beyond its retries before its job fails: a video that kills its worker process (a
decoder crash, memory) fails its own job instead of being requeued for ever."""


@app.task(name="deepfake_jobs.plan", bind=True, base=JobTask, max_retries=settings.piece_retries)
def plan_job(self: Task, job_id: str) -> str:
    """Pin the model version, plan the samples, cut the pieces and send one task per piece."""
    jobs = store()
    job = jobs.get(job_id)
    if job is None or job.state not in ACTIVE:
        return "skipped"
    if jobs.attempt(job_id, "plan") > settings.piece_retries + MAX_CRASHES:
        fail(job_id, {"code": "worker_lost", "message": "planning the job stopped its worker again and again"})
        return "failed"
    if job.state == "running" and job.get("plan"):  # redelivered after the pieces were sent: send the rest
        _send_missing(job_id)
        return "resent"
    jobs.transition(job_id, "running", ("queued", "running"))
    try:
        version = torchserve().default_version(settings.model)
        upload = Path(job.get("path"))
        index = index_video(upload, job.get("format"), settings.planning())
        planned = video.plan_video(index, parse_sampling(job.get("sampling")), settings.planning())
        pieces = video.cut_pieces(upload, job.get("format"), planned, job_folder(job_id) / "pieces",
                                  settings.piece_samples, settings.max_piece_bytes)
    except TorchServeBusy as error:
        raise self.retry(exc=error, countdown=_backoff(self.request.retries)) from error
    except (InputError, PieceRefused) as error:
        fail(job_id, _error_json(error))
        return "failed"
    frames = planned.video.frames
    jobs.update(job_id, model_version=version, samples_total=len(planned.samples), pieces_total=len(pieces),
                media={"fps": planned.video.fps, "frames_total": len(frames), "duration_s": frames.duration_s,
                       "wanted": planned.wanted, "moved": planned.moved},
                plan={"pieces": [piece.to_json() for piece in pieces]})
    if jobs.get(job_id).state != "running":  # cancelled while planning
        _clean(job_id)
        return "cancelled"
    for piece in pieces:
        score_piece.delay(job_id, piece.number)
    return "planned"


@app.task(name="deepfake_jobs.revive", base=JobTask)
def revive_job(job_id: str) -> str:
    """Send a stalled job's missing pieces again (``store.stalled``): a task lost with its worker is scored
    after all; one that was only slow is answered "already done"."""
    job = store().get(job_id)
    if job is None or job.state != "running" or not job.get("plan"):
        return "skipped"
    logger.warning("job %s made no progress for %.0f s: sending its missing pieces again", job_id, settings.stall_s)
    return f"resent {_send_missing(job_id)}"


def _send_missing(job_id: str) -> int:
    jobs = store()
    done = jobs.pieces(job_id)
    missing = [piece["number"] for piece in jobs.get(job_id).get("plan")["pieces"] if piece["number"] not in done]
    for number in missing:
        score_piece.delay(job_id, number)
    return len(missing)


@app.task(name="deepfake_jobs.score_piece", bind=True, base=JobTask, max_retries=settings.piece_retries)
def score_piece(self: Task, job_id: str, number: int) -> str:
    """Score one piece with the job's pinned version and store its frames; the last piece finishes the job."""
    jobs = store()
    job = jobs.get(job_id)
    if job is None or job.state != "running":
        return "skipped"
    if jobs.has_piece(job_id, number):  # scored by a delivery whose worker died before finishing the job
        if jobs.get(job_id).number("pieces_done") >= job.number("pieces_total"):
            finish(job_id)
        return "already done"
    if jobs.attempt(job_id, f"piece:{number}") > settings.piece_retries + MAX_CRASHES:
        fail(job_id, {"code": "worker_lost", "message": f"scoring piece {number} stopped its worker again and "
                      "again", "piece": number})
        return "failed"
    piece = video.Piece.from_json(job.get("plan")["pieces"][number])
    path = video.piece_path(job_folder(job_id) / "pieces", number)
    where = {"piece": number, "start_s": piece.times[0], "end_s": piece.times[-1]}
    try:
        answer = torchserve().score(settings.model, job.get("model_version"), path, piece.sampling())
        verdict = Verdict.from_json(answer, "video")
        if verdict.model.version != job.get("model_version"):
            raise merge.MergeError(f"piece {number} was scored by version {verdict.model.version}, not the "
                                   f"job's {job.get('model_version')}")
        kept = merge.piece_frames(verdict, piece.frames, piece.samples, piece.times)
    except TorchServeBusy as error:
        if self.request.retries >= self.max_retries:
            fail(job_id, {"code": "torchserve_unavailable", "message": str(error), **where})
            return "failed"
        raise self.retry(exc=error, countdown=_backoff(self.request.retries)) from error
    except (PieceRefused, VerdictError, merge.MergeError, OSError) as error:
        fail(job_id, {**_error_json(error), **where})
        return "failed"
    done = jobs.piece_done(job_id, number, kept, len(kept["frames"]))
    if done is not None and done >= job.number("pieces_total"):
        finish(job_id)
    return "scored"


def finish(job_id: str) -> None:
    """Merge the pieces into the job's verdict and mark it done (once), then clean up and call the webhook."""
    jobs = store()
    job = jobs.get(job_id)
    media = job.get("media")
    try:
        verdict = merge.merge(list(jobs.pieces(job_id).values()), job.get("format"), media["fps"],
                              media["frames_total"], media["duration_s"], parse_sampling(job.get("sampling")),
                              media["wanted"], set(media["moved"]))
    except (merge.MergeError, ValueError) as error:
        fail(job_id, _error_json(error))
        return
    seconds = time.time() - float(job.get("running_at") or job.get("queued_at"))
    if jobs.finish(job_id, verdict.to_json(), seconds, len(verdict.frames)):
        logger.info("job %s done: %d frames in %.1f s", job_id, len(verdict.frames), seconds)
        ended(job_id)


def fail(job_id: str, error: dict[str, Any]) -> None:
    """The job fails with ``error`` (once); its files go, its webhook is called."""
    if store().transition(job_id, "failed", ACTIVE, error) is not None:
        logger.warning("job %s failed: %s", job_id, error.get("message"))
        ended(job_id)


def ended(job_id: str) -> None:
    """What follows a job's end, however it ended: its record expires, its files go, its webhook is called."""
    store().expire(job_id, settings.retention_s)
    _clean(job_id)
    if store().get(job_id).get("webhook_url"):
        deliver_webhook.delay(job_id)


def _clean(job_id: str) -> None:
    shutil.rmtree(job_folder(job_id), ignore_errors=True)


@app.task(name="deepfake_jobs.webhook", bind=True, max_retries=5)
def deliver_webhook(self: Task, job_id: str) -> str:
    """POST the job's end to its webhook, signed with its owner's secret; retried with backoff."""
    job = store().get(job_id)
    if job is None:
        return "expired"
    owner = KeyRing(settings.key_file).by_id(job.owner)
    url = job.get("webhook_url")
    if owner is None or not webhooks.allowed(url, settings.allowed_webhooks):
        logger.warning("job %s: webhook not sent (owner key removed, or target no longer allowed)", job_id)
        return "refused"
    body = json.dumps({"id": job_id, "state": job.state, "url": f"/jobs/{job_id}",
                       "result_url": f"/jobs/{job_id}/result" if job.state == "done" else None,
                       "error": job.get("error")}).encode()
    try:
        answer = requests.post(url, data=body, timeout=settings.webhook_timeout_s, allow_redirects=False,
                               headers={"Content-Type": "application/json",
                                        webhooks.SIGNATURE_HEADER: webhooks.sign(body, owner.webhook_secret)})
        if answer.status_code >= 500:
            raise requests.HTTPError(f"HTTP {answer.status_code}")
    except requests.RequestException as error:
        raise self.retry(exc=error, countdown=_backoff(self.request.retries)) from error
    return f"HTTP {answer.status_code}"


def _backoff(retries: int) -> float:
    return min(60.0, 2.0 ** retries)


def _error_json(error: Exception) -> dict[str, Any]:
    if isinstance(error, InputError):
        return {"code": error.code, "message": error.detail, "status": error.status}
    if isinstance(error, PieceRefused):  # the detector's {"error", "detail"}, or TorchServe's {"code", "message"}
        body = error.error
        code = body.get("error") if isinstance(body.get("error"), str) else body.get("type") or "refused"
        return {"code": code, "message": f"TorchServe answered HTTP {error.status}: "
                f"{body.get('detail') or body.get('message') or body}", "status": error.status}
    if isinstance(error, merge.MergeError | VerdictError | ValueError):
        return {"code": "bad_answer", "message": str(error)}
    return {"code": type(error).__name__, "message": str(error)}
