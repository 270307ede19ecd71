"""Finding faces with facenet-pytorch's MTCNN.

Policy, in one place:

* The smallest face worth scoring is ``min_face_size`` pixels of the frame, and at least
  ``min_face_fraction`` (1/16) of its shorter side. The first search runs on a copy scaled so that this face
  is ``min_face_size`` px in it (MTCNN's reliable size; never enlarged, and at most ``detect_max_side``
  long): so the copy is at most 384 px on its shorter side, its pyramid starts at that face, and a 4K frame
  costs what a 1080p one costs. Boxes are mapped back to the frame, and crops come from the full frame.
* A frame in which that search finds no face gets a second look (:meth:`FaceDetector.detect`): a search on a
  larger copy (the frame itself up to ``second_look_max_pixels``), from ``min_face_size`` px of that copy.
  Only faceless frames pay for it; the answer says which search found the faces (``face_search``).
* Frames of the same copy size are detected in one batched MTCNN call (:class:`~.mtcnn.Mtcnn`: facenet-pytorch's
  boxes, computed faster; its networks on OpenVINO or PyTorch, ``detect_runtime``).
* Detections below ``min_face_probability`` are dropped; the ``max_faces_per_frame`` (32) most confident
  remaining faces are kept, most confident first (equal probabilities keep MTCNN's order), and the number
  left out beyond that bound is reported. Every kept face is scored, and the frame scores as its most-fake
  face (``verdict.frame_probability``).
* A frame with no face after both searches is scored on its largest centred square and reported with
  ``face_detected: false``.
* Media too small to search (``check_searchable``) are refused before decoding, as 422 ``too_small``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from facenet_pytorch import MTCNN

from .config import PipelineSettings
from .errors import InputError
from .mtcnn import Mtcnn
from .transforms import Box
from .verdict import FaceSearch


def smallest_face(width: int, height: int, settings: PipelineSettings) -> float:
    """Height in frame pixels of the smallest face the first search looks for."""
    return max(float(settings.min_face_size), settings.min_face_fraction * min(width, height))


def detection_size(width: int, height: int, settings: PipelineSettings) -> tuple[int, int]:
    """(width, height) of the first search's copy: the smallest face worth scoring becomes ``min_face_size``
    px, the frame is never enlarged, and the longer side is at most ``detect_max_side``."""
    scale = min(1.0, settings.min_face_size / smallest_face(width, height, settings),
                settings.detect_max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def second_look_size(width: int, height: int, settings: PipelineSettings) -> tuple[int, int]:
    """(width, height) of the second look's copy: the frame, shrunk to ``second_look_max_pixels`` at most."""
    scale = min(1.0, math.sqrt(settings.second_look_max_pixels / (width * height)))
    return max(1, round(width * scale)), max(1, round(height * scale))


def shrink(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` reduced to (width, height) with an area filter, in two steps when the reduction is large.

    OpenCV's area filter is several times slower for a fractional factor than for a whole one, so a large
    reduction first averages k x k blocks (k the whole part of the factor; a partial block at the right or
    bottom edge is averaged over the pixels it has) and then area-filters the remaining factor below 2.
    The result is within 2 grey levels on average of a one-step area resize (a slightly wider filter), at
    half its cost or less for a 4K frame. It makes the copy faces are searched on; crops keep the one-step
    area filter (``crop_and_resize``), the network's input definition.
    """
    source_height, source_width = image.shape[:2]
    whole = int(min(source_width / width, source_height / height))
    if whole >= 2:
        image = cv2.resize(image, None, fx=1.0 / whole, fy=1.0 / whole, interpolation=cv2.INTER_AREA)
    if image.shape[0] == height and image.shape[1] == width:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def check_searchable(settings: PipelineSettings, width: int, height: int, what: str) -> None:
    """Refuse media whose detection copy is too small for MTCNN (it fails on them instead of finding none)."""
    shorter = min(detection_size(width, height, settings))
    if shorter < settings.min_face_size:
        raise InputError(
            "too_small",
            f"the {what} is {width}x{height}: too small or too elongated to search for faces (faces are "
            f"searched on a copy at most {settings.detect_max_side} px long whose shorter side must be at "
            f"least {settings.min_face_size} px; this one would be {shorter} px)",
            422,
        )


@dataclass(frozen=True)
class Face:
    """A detected face in full-resolution pixel coordinates."""

    box: Box
    probability: float


@dataclass(frozen=True)
class FrameFaces:
    """What the searches found in one frame: the kept faces, how many more the bound left out, which search
    found them (``none``: neither did)."""

    faces: list[Face]
    left_out: int = 0
    search: FaceSearch = "none"


class FaceDetector:
    """Batched MTCNN over downscaled copies, with the selection policy of this module's docstring.

    ``threads``: the intra-op threads of OpenVINO's networks (default: PyTorch's, which the worker has set).
    """

    def __init__(self, settings: PipelineSettings, device: str | torch.device = "cpu",
                 threads: int | None = None) -> None:
        self.settings = settings
        self.device = torch.device(device)
        self.mtcnn = MTCNN(
            keep_all=True,
            select_largest=False,
            min_face_size=settings.min_face_size,
            post_process=False,
            device=self.device,
        )
        self.mtcnn.eval()
        self.stages = Mtcnn.create(self.mtcnn, settings.detect_runtime, threads or torch.get_num_threads())

    def warm_up(self) -> None:
        """Each of the three networks once, and a whole search of a blank frame."""
        self.stages.warm_up()
        self.detect([np.full((480, 640, 3), 128, dtype=np.uint8)])

    def detect(self, frames: list[np.ndarray]) -> list[FrameFaces]:
        """Faces for each RGB uint8 frame, in the same order, boxes in the frame's own pixels: the first search
        on every frame, the second look on those where it found none."""
        first = self.search(frames, lambda w, h: detection_size(w, h, self.settings))
        found = [FrameFaces(faces, left_out, "first" if faces else "none") for faces, left_out in first]
        faceless = [position for position, result in enumerate(found)
                    if not result.faces and self.second_look_differs(frames[position])]
        if faceless:
            second = self.search([frames[p] for p in faceless],
                                 lambda w, h: second_look_size(w, h, self.settings))
            for position, (faces, left_out) in zip(faceless, second):
                if faces:
                    found[position] = FrameFaces(faces, left_out, "second_look")
        return found

    def second_look_differs(self, frame: np.ndarray) -> bool:
        """Whether a second look at ``frame`` would search another copy than the first did (not when the
        frame is small enough for both to search it whole, or when the second look is off)."""
        height, width = frame.shape[:2]
        return bool(self.settings.second_look_max_pixels) and (
            second_look_size(width, height, self.settings) != detection_size(width, height, self.settings))

    def search(self, frames: list[np.ndarray], copy_size: Callable[[int, int], tuple[int, int]]
               ) -> list[tuple[list[Face], int]]:
        """(kept faces, number left out) for each frame, searched on the copy ``copy_size(w, h)`` gives,
        from ``min_face_size`` px of that copy; frames with copies of one size form one batch."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for position, frame in enumerate(frames):
            height, width = frame.shape[:2]
            groups[copy_size(width, height)].append(position)
        found: list[tuple[list[Face], int]] = [([], 0) for _ in frames]
        for (small_w, small_h), positions in groups.items():
            batch = np.stack([shrink(frames[p], small_w, small_h) for p in positions])
            boxes, probabilities = self.stages.detect(batch)
            for position, frame_boxes, frame_probs in zip(positions, boxes, probabilities):
                height, width = frames[position].shape[:2]
                found[position] = select_faces(frame_boxes, frame_probs, (width / small_w, height / small_h),
                                               (width, height), self.settings)
        return found


def select_faces(
    boxes: np.ndarray | None, probabilities: np.ndarray | None, scale: tuple[float, float],
    frame_size: tuple[int, int], settings: PipelineSettings,
) -> tuple[list[Face], int]:
    """The policy of this module's docstring on one frame's MTCNN output (boxes in the detection copy):
    confident enough, mapped to the frame's pixels, most confident first (ties keep MTCNN's order), capped;
    with the number of faces the cap left out."""
    if boxes is None or probabilities is None:
        return [], 0
    (scale_x, scale_y), (width, height) = scale, frame_size
    faces = []
    for box, probability in zip(boxes, probabilities):
        if probability is None or probability < settings.min_face_probability:
            continue
        x1 = float(np.clip(box[0] * scale_x, 0, width))
        y1 = float(np.clip(box[1] * scale_y, 0, height))
        x2 = float(np.clip(box[2] * scale_x, 0, width))
        y2 = float(np.clip(box[3] * scale_y, 0, height))
        if x2 - x1 >= 1 and y2 - y1 >= 1:
            faces.append(Face((x1, y1, x2, y2), float(probability)))
    faces.sort(key=lambda face: face.probability, reverse=True)
    kept = faces[: settings.max_faces_per_frame]
    return kept, len(faces) - len(kept)
