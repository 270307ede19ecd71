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
* Frames of the same copy size are detected in one batched MTCNN call (:func:`detect_batched`, on the CPU
  and the GPU alike).
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
from facenet_pytorch.models.utils.detect_face import batched_nms_numpy, bbreg, generateBoundingBox, pad, rerec
from torch.nn.functional import interpolate
from torchvision.ops.boxes import batched_nms

from .config import PipelineSettings
from .errors import InputError
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
    """Batched MTCNN over downscaled copies, with the selection policy of this module's docstring."""

    def __init__(self, settings: PipelineSettings, device: str | torch.device = "cpu") -> None:
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

    def warm_up(self) -> None:
        """Each of the three networks once: a blank frame gives the first no candidate for the other two."""
        self.detect([np.full((480, 640, 3), 128, dtype=np.uint8)])
        with torch.inference_mode():
            for network, size in ((self.mtcnn.rnet, 24), (self.mtcnn.onet, 48)):
                network(_network_input(torch.zeros(2, 3, size, size, device=self.device)))

    def detect(self, frames: list[np.ndarray]) -> list[FrameFaces]:
        """Faces for each RGB uint8 frame, in the same order, boxes in the frame's own pixels: the first search
        on every frame, the second look on those where it found none."""
        first = self.search(frames, lambda w, h: detection_size(w, h, self.settings))
        found = [FrameFaces(faces, left_out, "first" if faces else "none") for faces, left_out in first]
        faceless = [position for position, result in enumerate(found)
                    if not result.faces and self._second_look_differs(frames[position])]
        if faceless:
            second = self.search([frames[p] for p in faceless],
                                 lambda w, h: second_look_size(w, h, self.settings))
            for position, (faces, left_out) in zip(faceless, second):
                if faces:
                    found[position] = FrameFaces(faces, left_out, "second_look")
        return found

    def _second_look_differs(self, frame: np.ndarray) -> bool:
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
            with torch.inference_mode():
                boxes, probabilities = detect_batched(self.mtcnn, batch)
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


def detect_batched(mtcnn: MTCNN, batch: np.ndarray) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """MTCNN's three stages on a batch of same-sized uint8 RGB frames, on the device MTCNN is on.

    The networks, thresholds, pyramid, resampling (area) and box arithmetic are facenet-pytorch's, so the
    boxes are the same as ``MTCNN.detect``'s. What differs is the arrangement: the networks run in
    channels_last memory (max-pooling is several times faster there on a CPU), and the candidate windows of
    the second and third stages are resampled in one call per window size rather than one per window, which
    matters most on a GPU, where facenet-pytorch's loop launches a few kernels per window.
    Returns, per frame, an (N, 4) box array and N probabilities, or None and None when nothing was found.
    """
    images = torch.from_numpy(np.require(batch, requirements="W")).to(mtcnn.device).permute(0, 3, 1, 2).float()
    count, _, height, width = images.shape
    thresholds = mtcnn.thresholds
    scale = 12.0 / mtcnn.min_face_size
    shortest = min(height, width) * scale
    scales = []
    while shortest >= 12:
        scales.append(scale)
        scale *= mtcnn.factor
        shortest *= mtcnn.factor

    boxes_per_scale, frames_per_scale = [], []
    for scale in scales:
        level = interpolate(images, size=(int(height * scale + 1), int(width * scale + 1)), mode="area")
        regression, probabilities = mtcnn.pnet(_network_input(level))
        boxes, frame_of_box = generateBoundingBox(regression, probabilities[:, 1], scale, thresholds[0])
        keep = batched_nms(boxes[:, :4], boxes[:, 4], frame_of_box, 0.5)
        boxes_per_scale.append(boxes[keep])
        frames_per_scale.append(frame_of_box[keep])
    boxes = torch.cat(boxes_per_scale)
    frame_of_box = torch.cat(frames_per_scale)
    keep = batched_nms(boxes[:, :4], boxes[:, 4], frame_of_box, 0.7)
    boxes, frame_of_box = boxes[keep], frame_of_box[keep]
    width_of_box = boxes[:, 2] - boxes[:, 0]
    height_of_box = boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack([
        boxes[:, 0] + boxes[:, 5] * width_of_box, boxes[:, 1] + boxes[:, 6] * height_of_box,
        boxes[:, 2] + boxes[:, 7] * width_of_box, boxes[:, 3] + boxes[:, 8] * height_of_box, boxes[:, 4],
    ], dim=1)
    boxes = rerec(boxes)

    if len(boxes):
        windows, boxes, frame_of_box = _windows(images, boxes, frame_of_box, 24)
        regression, probabilities = mtcnn.rnet(_network_input(windows))
        passed = probabilities[:, 1] > thresholds[1]
        boxes = torch.cat((boxes[passed, :4], probabilities[passed, 1:2]), dim=1)
        frame_of_box, regression = frame_of_box[passed], regression[passed]
        keep = batched_nms(boxes[:, :4], boxes[:, 4], frame_of_box, 0.7)
        boxes = rerec(bbreg(boxes[keep], regression[keep]))
        frame_of_box = frame_of_box[keep]

    if len(boxes):
        windows, boxes, frame_of_box = _windows(images, boxes, frame_of_box, 48)
        regression, _, probabilities = mtcnn.onet(_network_input(windows))
        passed = probabilities[:, 1] > thresholds[2]
        boxes = torch.cat((boxes[passed, :4], probabilities[passed, 1:2]), dim=1)
        frame_of_box, regression = frame_of_box[passed], regression[passed]
        boxes = bbreg(boxes, regression)
        keep = batched_nms_numpy(boxes[:, :4], boxes[:, 4], frame_of_box, 0.7, "Min")
        boxes, frame_of_box = boxes[keep], frame_of_box[keep]

    found = boxes.cpu().numpy()
    frame_of_found = frame_of_box.cpu().numpy()
    all_boxes: list[np.ndarray | None] = []
    all_probabilities: list[np.ndarray | None] = []
    for frame in range(count):
        mine = found[frame_of_found == frame]
        all_boxes.append(mine[:, :4].copy() if len(mine) else None)
        all_probabilities.append(mine[:, 4].copy() if len(mine) else None)
    return all_boxes, all_probabilities


def _network_input(images: torch.Tensor) -> torch.Tensor:
    """Float pixels (N, 3, H, W) -> MTCNN's input scaled to about [-1, 1], in channels_last memory."""
    return ((images - 127.5) * 0.0078125).contiguous(memory_format=torch.channels_last)


def _windows(
    images: torch.Tensor, boxes: torch.Tensor, frame_of_box: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each candidate's window clipped to its frame and resampled to size x size, and the boxes kept.

    Windows of one shape are stacked and resampled together: the same numbers as one call each.
    """
    height, width = images.shape[2:]
    top, bottom, left, right = pad(boxes, width, height)
    frames = frame_of_box.cpu().numpy()
    kept = [k for k in range(len(top)) if bottom[k] > top[k] - 1 and right[k] > left[k] - 1]
    by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
    for position, k in enumerate(kept):
        by_shape[(bottom[k] - top[k] + 1, right[k] - left[k] + 1)].append(position)
    windows = torch.empty(len(kept), 3, size, size, device=images.device)
    for positions in by_shape.values():
        crops = torch.stack([
            images[frames[kept[p]], :, top[kept[p]] - 1:bottom[kept[p]], left[kept[p]] - 1:right[kept[p]]]
            for p in positions
        ])
        windows[positions] = interpolate(crops, size=(size, size), mode="area")
    selection = torch.as_tensor(kept, dtype=torch.int64, device=boxes.device)
    return windows, boxes[selection], frame_of_box[selection]
