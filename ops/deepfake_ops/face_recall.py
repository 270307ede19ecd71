"""Face recall of a detector against facenet-pytorch's MTCNN run at full resolution.

The product searches for faces on a downscaled copy of each photo or frame, which is cheaper but can lose
faces. This module measures what that costs: the share of the faces that MTCNN finds at full resolution,
confidently and big enough to be worth judging, that the detector under test also finds.

* Reference faces: ``MTCNN(keep_all=True, post_process=False, min_face_size=20)`` with its default thresholds,
  ``.detect`` on the full-resolution PIL image; kept when the probability is at least
  :data:`REFERENCE_MIN_PROBABILITY`, the box at least :data:`REFERENCE_MIN_HEIGHT` px high and at least
  :data:`REFERENCE_MIN_HEIGHT_FRACTION` of the image's shorter side.
* Reference boxes are clipped to the image first (MTCNN's may run past the edge for a face cut off by it):
  detectors report, and crops take, the visible part only, so an unclipped box could never reach the IoU
  of a cut-off face; the height rules apply to the visible part.
* Matching: one to one, greedy by IoU. All (reference, detected) pairs with IoU >= :data:`MATCH_IOU` are
  taken in decreasing IoU order, each box used at most once, so one detection cannot account for two
  reference faces and a duplicate detection cannot hide a miss. Extra detections are not penalised: this is
  recall, not precision.
* ``find_boxes`` takes all images at once and returns boxes in full-resolution pixels, so any detector (and
  any version of ``FaceDetector``'s return type) can be measured through a one-line adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from deepfake_detector.config import PipelineSettings
from deepfake_detector.media import decode_media
from deepfake_detector.tracks import iou
from facenet_pytorch import MTCNN
from PIL import Image

from .load_media import make_load_media

BoxTuple = tuple[float, float, float, float]
"""(x1, y1, x2, y2) in the image's own pixels."""

REFERENCE_MIN_FACE_SIZE = 20
"""``min_face_size`` of the reference MTCNN: smaller than any face it keeps, so the filter below decides."""
REFERENCE_MIN_PROBABILITY = 0.95
"""Reference faces are those MTCNN is sure of: a doubtful one is no fair test of the detector."""
REFERENCE_MIN_HEIGHT = 40.0
"""...at least this many pixels high: smaller faces carry too little detail to judge."""
REFERENCE_MIN_HEIGHT_FRACTION = 1 / 16
"""...and at least this share of the image's shorter side: background faces are not what is judged."""
MATCH_IOU = 0.5
"""A reference face is found when a detected box overlaps it at least this much (intersection over union)."""
CARPHONE_STRIDE = 10
"""Every 10th frame of the carphone video (176x144, 120 frames): 12 frames."""
CLIP_STRIDE = 30
"""Every 30th frame of the 720p clip (300 frames): 10 frames."""
EXTRA_SUFFIXES = (".jpg", ".jpeg", ".png")

FindBoxes = Callable[[list[np.ndarray]], list[list[BoxTuple]]]


def reference_mtcnn(device: str = "cpu") -> MTCNN:
    """The reference detector: facenet-pytorch's MTCNN with default thresholds, every face, raw pixels."""
    mtcnn = MTCNN(keep_all=True, post_process=False, min_face_size=REFERENCE_MIN_FACE_SIZE, device=device)
    mtcnn.eval()
    return mtcnn


def reference_faces(image: np.ndarray, mtcnn: MTCNN | None = None) -> list[BoxTuple]:
    """The faces the detector must find in an RGB uint8 HxWx3 image, under the module's reference rule."""
    mtcnn = mtcnn if mtcnn is not None else reference_mtcnn()
    boxes, probabilities = mtcnn.detect(Image.fromarray(image))
    if boxes is None:
        return []
    height, width = image.shape[:2]
    min_height = max(REFERENCE_MIN_HEIGHT, REFERENCE_MIN_HEIGHT_FRACTION * min(height, width))
    faces = []
    for box, probability in zip(boxes, probabilities):
        if probability is None or probability < REFERENCE_MIN_PROBABILITY:
            continue
        clipped = (float(np.clip(box[0], 0, width)), float(np.clip(box[1], 0, height)),
                   float(np.clip(box[2], 0, width)), float(np.clip(box[3], 0, height)))
        if clipped[3] - clipped[1] >= min_height:
            faces.append(clipped)
    return faces


def match(reference: list[BoxTuple], detected: list[BoxTuple], threshold: float = MATCH_IOU) -> list[bool]:
    """For each reference box, whether a detected box was matched to it (one to one, greedy by IoU)."""
    pairs = sorted(
        ((iou(r, d), i, j) for i, r in enumerate(reference) for j, d in enumerate(detected)),
        key=lambda pair: -pair[0],
    )
    found = [False] * len(reference)
    used: set[int] = set()
    for overlap, i, j in pairs:
        if overlap < threshold:
            break
        if not found[i] and j not in used:
            found[i] = True
            used.add(j)
    return found


@dataclass(frozen=True)
class RecallReport:
    """How many reference faces a detector found, and which it missed (image name, reference box)."""

    images: int
    reference_faces: int
    found: int
    missed: list[tuple[str, BoxTuple]]

    @property
    def recall(self) -> float:
        """Found / reference faces; 1.0 when there is nothing to find (nothing was missed)."""
        return self.found / self.reference_faces if self.reference_faces else 1.0


def measure_recall(
    images: dict[str, np.ndarray], find_boxes: FindBoxes, *, mtcnn: MTCNN | None = None,
    reference: dict[str, list[BoxTuple]] | None = None,
) -> RecallReport:
    """Recall of ``find_boxes`` on ``images`` (name -> RGB uint8 array) against :func:`reference_faces`.

    ``find_boxes`` gets every image in one list (so a batched detector is measured as it runs) and returns
    each one's boxes in full-resolution pixels. ``reference`` may carry boxes already computed by
    :func:`reference_faces` for the same images (they are slow at full resolution and do not depend on the
    detector); missing names are computed with ``mtcnn``.
    """
    names = list(images)
    mtcnn = mtcnn if mtcnn is not None else reference_mtcnn()
    known = reference or {}
    references = {name: known[name] if name in known else reference_faces(images[name], mtcnn) for name in names}
    detected = find_boxes([images[name] for name in names])
    if len(detected) != len(names):
        raise ValueError(f"find_boxes returned boxes for {len(detected)} images, expected {len(names)}")
    found, missed = 0, []
    for name, boxes in zip(names, detected):
        matched = match(references[name], [tuple(float(v) for v in box) for box in boxes])
        found += sum(matched)
        missed.extend((name, box) for box, hit in zip(references[name], matched) if not hit)
    return RecallReport(len(names), sum(len(r) for r in references.values()), found, missed)


def video_frames(path: Path, stride: int) -> list[tuple[int, np.ndarray]]:
    """(index, RGB frame) of every ``stride``-th frame of a video, as the server decodes them."""
    settings = PipelineSettings(sampling=f"every_nth:{stride}", max_frames=PipelineSettings().max_video_frames)
    decoded = decode_media(path.read_bytes(), settings)
    return list(zip(decoded.frame_indices, decoded.frames, strict=True))


def load_rgb(path: Path) -> np.ndarray:
    """An image file as RGB uint8 (alpha and palette images converted)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def recall_media(extra_dir: Path | None = None) -> dict[str, np.ndarray]:
    """The real photos and frames recall is measured on, by name.

    The load-test photos (astronaut and grace_hopper at 480p, 1080p and 4K and as 224 px face crops, the 8-face
    group photo), every 10th carphone frame, every 30th frame of the 720p clip, and, when ``extra_dir`` is given,
    its images
    (meant for the portraits in face-recognition 1.3.0's sdist, ``tests/test_images/``; nothing is downloaded
    here). Names: the file name, ``<video>#<frame>`` for frames, ``extra/<file>`` for ``extra_dir``.
    """
    made = make_load_media()
    media: dict[str, np.ndarray] = {}
    for path in made.all_photos():
        media[path.name] = load_rgb(path)
    for name, stride in (("carphone", CARPHONE_STRIDE), ("clip_720p", CLIP_STRIDE)):
        for index, frame in video_frames(made.videos[name], stride):
            media[f"{name}#{index:04d}"] = frame
    if extra_dir is not None:
        for path in sorted(Path(extra_dir).iterdir()):
            if path.suffix.lower() in EXTRA_SUFFIXES:
                media[f"extra/{path.name}"] = load_rgb(path)
    return media
