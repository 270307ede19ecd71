"""Load tests of a running detector: real face photos at several sizes, real face videos, and a mix.

    make loadtest                                   # headless, reports under reports/loadtest/
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 MixedUser

User classes (name them on the command line; with none, Locust runs all three by their weights):

* ``ImageUser``  posts the photos of ``reports/media`` (480p, 1080p, 4K; see deepfake_ops.load_media).
* ``VideoUser``  posts the carphone face video and a 720p clip made from its frames.
* ``MixedUser``  nine images for every video.

Every 200 answer is validated as a verdict (``deepfake_detector.verdict``); a schema violation, an
error status or a body that is not JSON counts as a failure. Settings come from environment variables:

=====================  ==========================================================================
``DFD_TOKEN``          inference token (``key_file.json``'s ``inference.key``); sent as a Bearer token
``DFD_MODEL``          model name (default ``deepfake_detector``)
``DFD_MODEL_VERSION``  a version to target (``/predictions/NAME/VERSION``); default: the default version
``DFD_MEDIA_DIR``      folder of the generated media (default ``reports/media``, made if missing)
``DFD_IMAGE_SIZES``    comma list among 480p, 1080p, 4k (default all)
``DFD_VIDEOS``         comma list among carphone, clip_720p (default both)
``DFD_WAIT_S``         think time between a user's requests (default 0: saturation)
=====================  ==========================================================================
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from deepfake_detector.archive import DEFAULT_MODEL_NAME
from deepfake_detector.verdict import Verdict, VerdictError
from deepfake_ops.load_media import DEFAULT_MEDIA_DIR, PHOTO_HEIGHTS, make_load_media
from locust import FastHttpUser, between, constant, task

MODEL = os.environ.get("DFD_MODEL", DEFAULT_MODEL_NAME)
MODEL_VERSION = os.environ.get("DFD_MODEL_VERSION", "").strip()
TOKEN = os.environ.get("DFD_TOKEN", "").strip()
MEDIA_DIR = Path(os.environ.get("DFD_MEDIA_DIR", str(DEFAULT_MEDIA_DIR)))
IMAGE_SIZES = [s.strip() for s in os.environ.get("DFD_IMAGE_SIZES", ",".join(PHOTO_HEIGHTS)).split(",") if s.strip()]
VIDEOS = [s.strip() for s in os.environ.get("DFD_VIDEOS", "carphone,clip_720p").split(",") if s.strip()]
WAIT_S = float(os.environ.get("DFD_WAIT_S", "0"))

PATH = f"/predictions/{MODEL}" + (f"/{MODEL_VERSION}" if MODEL_VERSION else "")
HEADERS = {"Content-Type": "application/octet-stream"} | ({"Authorization": f"Bearer {TOKEN}"} if TOKEN else {})


def _load_media() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(label, bytes) of the images and videos to send, read once per Locust process."""
    unknown = sorted(set(IMAGE_SIZES) - set(PHOTO_HEIGHTS)) + sorted(set(VIDEOS) - {"carphone", "clip_720p"})
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
