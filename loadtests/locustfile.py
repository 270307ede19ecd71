"""Load tests of a running detector: real face photos at several sizes, real face videos, and a mix; long videos
through the job service beside them.

    make loadtest                                   # headless, reports under reports/loadtest/
    make loadtest-jobs                              # photos alone, then photos beside long-video jobs
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 MixedUser

User classes (name them on the command line; with none, Locust runs the first three by their weights):

* ``ImageUser``  posts the photos of ``reports/media`` (480p, 1080p, 4K; see deepfake_ops.load_media).
* ``VideoUser``  posts the carphone face video and a 720p clip made from its frames.
* ``MixedUser``  nine images for every video.
* ``JobUser``    only when named: submits a long video to the job API (``DFD_JOBS_URL``, not ``--host``, so
  that it runs in the same Locust process as the others), polls it until it ends and checks its verdict.
  ``DFD_JOB_USERS`` of them run (``fixed_count``); ``-u`` counts them, the other users are the rest.

Every 200 answer is validated as a verdict (``deepfake_detector.verdict``); a schema violation, an
error status or a body that is not JSON counts as a failure. A job's whole life is one ``JOB`` entry,
``job done``, timed from its submission to the poll that saw it end (so up to ``DFD_JOB_POLL_S`` late), and
a failure when the job failed, was cancelled or its verdict is invalid; its polls are one entry, ``job poll``.
A job still running when the test stops is cancelled and counted in neither. Settings come from environment
variables:

=====================  ==========================================================================
``DFD_TOKEN``          inference token (``key_file.json``'s ``inference.key``); sent as a Bearer token
``DFD_MODEL``          model name (default ``deepfake_detector``)
``DFD_MODEL_VERSION``  a version to target (``/predictions/NAME/VERSION``); default: the default version
``DFD_MEDIA_DIR``      folder of the generated media (default ``reports/media``, made if missing)
``DFD_IMAGE_SIZES``    comma list among 480p, 1080p, 4k, face (224 px face crops); default the three resolutions
``DFD_VIDEOS``         comma list among carphone, clip_720p (default both)
``DFD_WAIT_S``         think time between a user's requests (default 0: saturation)
``DFD_JOBS_URL``       JobUser: the job API (default ``http://127.0.0.1:8090``, ``make jobs``'s)
``DFD_JOBS_KEY``       JobUser: a job API key (``python -m deepfake_jobs.keys show default``); required
``DFD_JOB_VIDEO``      JobUser: the video to submit (e.g. ``deepfake_ops.load_media.long_video()``'s); required
``DFD_JOB_SAMPLING``   JobUser: the jobs' ``sampling`` (default ``every_seconds:5``)
``DFD_JOB_POLL_S``     JobUser: seconds between polls of a job (default 1)
``DFD_JOB_USERS``      JobUser: how many run (default 1)
``DFD_JOB_TIMEOUT_S``  JobUser: a job not ended after this long counts as failed (default 3600)
=====================  ==========================================================================
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gevent
from deepfake_detector.archive import DEFAULT_MODEL_NAME
from deepfake_detector.verdict import Verdict, VerdictError
from deepfake_jobs.store import ENDED
from deepfake_ops.load_media import DEFAULT_MEDIA_DIR, PHOTO_HEIGHTS, PHOTO_SIZES, make_load_media
from locust import FastHttpUser, between, constant, events, task
from locust.env import Environment

MODEL = os.environ.get("DFD_MODEL", DEFAULT_MODEL_NAME)
MODEL_VERSION = os.environ.get("DFD_MODEL_VERSION", "").strip()
TOKEN = os.environ.get("DFD_TOKEN", "").strip()
MEDIA_DIR = Path(os.environ.get("DFD_MEDIA_DIR", str(DEFAULT_MEDIA_DIR)))
IMAGE_SIZES = [s.strip() for s in os.environ.get("DFD_IMAGE_SIZES", ",".join(PHOTO_HEIGHTS)).split(",") if s.strip()]
VIDEOS = [s.strip() for s in os.environ.get("DFD_VIDEOS", "carphone,clip_720p").split(",") if s.strip()]
WAIT_S = float(os.environ.get("DFD_WAIT_S", "0"))
JOBS_URL = os.environ.get("DFD_JOBS_URL", "http://127.0.0.1:8090").strip().rstrip("/")
JOBS_KEY = os.environ.get("DFD_JOBS_KEY", "").strip()
JOB_VIDEO = os.environ.get("DFD_JOB_VIDEO", "").strip()
JOB_SAMPLING = os.environ.get("DFD_JOB_SAMPLING", "every_seconds:5").strip()
JOB_POLL_S = float(os.environ.get("DFD_JOB_POLL_S", "1"))
JOB_USERS = int(os.environ.get("DFD_JOB_USERS", "1"))
JOB_TIMEOUT_S = float(os.environ.get("DFD_JOB_TIMEOUT_S", "3600"))

PATH = f"/predictions/{MODEL}" + (f"/{MODEL_VERSION}" if MODEL_VERSION else "")
HEADERS = {"Content-Type": "application/octet-stream"} | ({"Authorization": f"Bearer {TOKEN}"} if TOKEN else {})


def _load_media() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(label, bytes) of the images and videos to send, read once per Locust process."""
    unknown = sorted(set(IMAGE_SIZES) - set(PHOTO_SIZES)) + sorted(set(VIDEOS) - {"carphone", "clip_720p"})
    if unknown:
        raise SystemExit(f"unknown DFD_IMAGE_SIZES/DFD_VIDEOS entries {unknown}")
    made = make_load_media(MEDIA_DIR)
    images = [(f"image {size}", path.read_bytes()) for size in IMAGE_SIZES for path in made.photos_of_size(size)]
    videos = [(f"video {name}", made.videos[name].read_bytes()) for name in VIDEOS]
    return images, videos


IMAGES, VIDEOS_MEDIA = _load_media()


class DetectorUser(FastHttpUser):
    """Posts raw bytes and holds every answer to the schema."""

    abstract = True
    wait_time = between(0.5 * WAIT_S, 1.5 * WAIT_S) if WAIT_S > 0 else constant(0)

    def on_start(self) -> None:
        self._images = itertools.cycle(IMAGES)
        self._videos = itertools.cycle(VIDEOS_MEDIA)

    def post(self, label: str, body: bytes, kind: str) -> None:
        with self.client.post(PATH, data=body, headers=HEADERS, name=label, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                answer = json.loads(response.content)
            except (TypeError, ValueError):
                response.failure(f"not JSON: {(response.text or '')[:200]}")
                return
            try:
                verdict = Verdict.from_json(answer, kind)
            except VerdictError as error:
                response.failure("schema: " + "; ".join(error.problems[:3]))
                return
            if MODEL_VERSION and verdict.model.version != MODEL_VERSION:
                response.failure(f"answered by version {verdict.model.version}, not {MODEL_VERSION}")
            else:
                response.success()

    def post_image(self) -> None:
        label, body = next(self._images)
        self.post(label, body, "image")

    def post_video(self) -> None:
        label, body = next(self._videos)
        self.post(label, body, "video")


class ImageUser(DetectorUser):
    """Face photos at 480p, 1080p and 4K, in turn."""

    weight = 3

    @task
    def image(self) -> None:
        self.post_image()


class VideoUser(DetectorUser):
    """The real face video and the 720p clip, in turn."""

    weight = 1

    @task
    def video(self) -> None:
        self.post_video()


class MixedUser(DetectorUser):
    """Nine photos for every video, as a service that mostly sees images would receive."""

    weight = 2

    @task(9)
    def image(self) -> None:
        self.post_image()

    @task(1)
    def video(self) -> None:
        self.post_video()


class JobFailed(Exception):
    """Why a job did not end in a valid verdict (the ``job done`` entry's failure)."""


class JobUser(FastHttpUser):
    """One long video after another through the job API: submit, poll until it ends, check the verdict."""

    host = JOBS_URL
    fixed_count = JOB_USERS
    wait_time = constant(0)
    network_timeout = 600.0  # the upload of a long video, which the API indexes before it answers
    _video: bytes | None = None

    def __init__(self, environment: Environment) -> None:
        # --host (TorchServe, for the other users) is written over every class's host at start: this user's
        # client is made from DFD_JOBS_URL whatever it says.
        self.host = JOBS_URL
        super().__init__(environment)

    def on_start(self) -> None:
        if JobUser._video is None:  # read once per Locust process, shared by the job users
            JobUser._video = Path(JOB_VIDEO).read_bytes()
        self._headers = {"Authorization": f"Bearer {JOBS_KEY}"}

    @task
    def job(self) -> None:
        started = time.perf_counter()
        job_id, error, length = None, None, 0
        try:
            job_id = self._submit()
            status = self._poll(job_id, started)
            if status is None:  # the test is stopping: not finished, not failed
                return
            length = self._check_result(job_id, status)
        except JobFailed as failure:
            error = failure
        self.environment.events.request.fire(
            request_type="JOB", name="job done", response_time=1000 * (time.perf_counter() - started),
            response_length=length, exception=error, context={}, response=None,
            url=f"/jobs/{job_id}" if job_id else "/jobs")

    def _submit(self) -> str:
        url = f"/jobs?sampling={quote(JOB_SAMPLING)}"
        headers = self._headers | {"Content-Type": "application/octet-stream"}
        with self.client.post(url, data=self._video, headers=headers, name="job submit",
                              catch_response=True) as response:
            if response.status_code != 202:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                raise JobFailed(f"submit answered HTTP {response.status_code}")
            response.success()
            return json.loads(response.content)["id"]

    def _poll(self, job_id: str, started: float) -> dict[str, Any] | None:
        """The job's status once it ended; None if the test stopped first (the job is then cancelled)."""
        while True:
            gevent.sleep(JOB_POLL_S)
            if _stopping:
                self.client.delete(f"/jobs/{job_id}", headers=self._headers, name="job cancel (test stopped)")
                return None
            if time.perf_counter() - started > JOB_TIMEOUT_S:
                raise JobFailed(f"not ended after {JOB_TIMEOUT_S:.0f} s")
            with self.client.get(f"/jobs/{job_id}", headers=self._headers, name="job poll",
                                 catch_response=True) as response:
                if response.status_code != 200:
                    response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                    continue
                response.success()
                status = json.loads(response.content)
            if status["state"] in ENDED:
                return status

    def _check_result(self, job_id: str, status: dict[str, Any]) -> int:
        """The verdict's length in bytes, once it is valid and covers every planned frame."""
        if status["state"] != "done":
            raise JobFailed(f"job {status['state']}: {json.dumps(status.get('error'))[:200]}")
        with self.client.get(f"/jobs/{job_id}/result", headers=self._headers, name="job result",
                             catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                raise JobFailed(f"result answered HTTP {response.status_code}")
            response.success()
            body = response.content
        try:
            verdict = Verdict.from_json(json.loads(body), "video")
        except (TypeError, ValueError) as error:
            problems = "; ".join(error.problems[:3]) if isinstance(error, VerdictError) else str(error)[:200]
            raise JobFailed(f"result: {problems}") from None
        progress = status["progress"]
        if not len(verdict.frames) == progress["frames_done"] == progress["frames_total"]:
            raise JobFailed(f"{len(verdict.frames)} frames in the verdict, progress {progress}")
        return len(body)


_stopping = False
"""Set when the test stops, so that a job user in its polling loop cancels its job instead of waiting for it."""


@events.init.add_listener
def _job_user_only_when_named(environment: Environment, **_: Any) -> None:
    """JobUser needs the job service: it runs only when named (Locust runs every class when none is)."""
    named = getattr(environment.parsed_options, "user_classes", None) or []
    if "JobUser" not in named:
        environment.user_classes[:] = [user for user in environment.user_classes if user is not JobUser]
        return
    if not JOBS_KEY:
        raise SystemExit("JobUser needs DFD_JOBS_KEY (python -m deepfake_jobs.keys show default)")
    if not JOB_VIDEO or not Path(JOB_VIDEO).is_file():
        raise SystemExit(f"JobUser needs DFD_JOB_VIDEO, the path of a video to submit (got {JOB_VIDEO!r})")


@events.test_start.add_listener
def _test_starts(**_: Any) -> None:
    global _stopping
    _stopping = False


@events.test_stopping.add_listener
def _test_stops(**_: Any) -> None:
    global _stopping
    _stopping = True
