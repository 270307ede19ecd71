"""What the tests share: real media, the archives and servers they run, and the helpers that check them.

Test modules import from here (``from tests.support import Media``) and never from one another; fixtures
live in ``tests/conftest.py``. The levels are folders: ``unit/`` (the library and tools in-process),
``handler/`` (built archives and their handler, no Java) and ``server/`` (real TorchServe instances,
every test marked ``server``).
"""

from __future__ import annotations

from collections.abc import Callable

from deepfake_detector.archive import DEFAULT_MODEL_NAME
from deepfake_detector.verdict import FaceScore, FrameScore, MediaInfo, ModelInfo, Verdict
from deepfake_ops.packaged import ASTRONAUT, CARPHONE, CHELSEA, GRACE_HOPPER
from deepfake_ops.torchserve import TorchServeInstance

MODEL_NAME = DEFAULT_MODEL_NAME
StartServer = Callable[..., TorchServeInstance]
"""The ``start_server`` fixture: ``start(store, archives, wait_for=MODEL_NAME, **instance_settings)``."""
OCTET = {"Content-Type": "application/octet-stream"}
ONE_WORKER = {"minWorkers": 1, "maxWorkers": 1}
"""Test archives run one worker per version: CI has two cores and the tests start a dozen servers, several
versions each. Everything else is config/model-config.yaml's (ONNX Runtime forward included)."""

TRAINING_CROP_SIZE = 64
TRAINING_SPLITS = (("carphone", "train"), ("astronaut", "val"), ("grace_hopper", "val"))
"""The ``faces`` fixture's crops: the carphone video trains, the two face photos validate."""


class Media:
    """Real photos and video that no one here made, shipped inside PyPI packages."""

    astronaut = ASTRONAUT.locate()  # one face, public domain
    grace_hopper = GRACE_HOPPER.locate()  # one face
    cat = CHELSEA.locate()  # no face
    face_video = CARPHONE.locate()  # 120 frames, 176x144


LANDMARKS = {
    "astronaut": ([(205, 105), (245, 105), (225, 147)], (185, 70, 265, 175)),
    "grace_hopper": ([(225, 195), (310, 195), (265, 280)], (175, 140, 355, 320)),
}
"""Eyes and mouth (hand-placed) and a hand-drawn face box of each face photo."""


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def assert_on_face(box, name: str) -> None:
    """The box holds the photo's eyes and mouth and overlaps its hand-drawn face box."""
    points, labelled = LANDMARKS[name]
    for x, y in points:
        assert box[0] <= x <= box[2] and box[1] <= y <= box[3], (name, box, (x, y))
    assert iou(box, labelled) > 0.5, (name, box)


def image_verdict(fake_probability: float, faces: int = 1, media_format: str = "jpeg") -> Verdict:
    """A verdict on a 512x600 image with ``faces`` faces of that fake probability (none: a centre crop)."""
    scored = [FaceScore((10.0 + i, 20.0, 110.0 + i, 140.0), 0.99, fake_probability) for i in range(faces)]
    frame = FrameScore.scored(0, scored, None if faces else fake_probability)
    return Verdict.of_image(frame, 0.5, MediaInfo("image", media_format, 512, 600),
                            ModelInfo(MODEL_NAME, "1.0", "efficientnet_b4", False))
