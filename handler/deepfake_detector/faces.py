"""Finding faces with facenet-pytorch's MTCNN.

Policy, in one place:

* Detection runs on a copy whose longest side is at most ``detect_max_side`` pixels, so its cost does not
  grow with the input's resolution; boxes are mapped back to full-resolution coordinates and the crop is
  taken from the full-resolution frame.
* Frames of the same (downscaled) size are detected in one batched MTCNN call.
* Detections below ``min_face_probability`` are dropped; the ``max_faces_per_frame`` most confident
  remaining faces are kept, most confident first. Every kept face is scored and the frame's score is the
  highest of them: one manipulated face makes the frame fake.
* A frame with no face is scored on its largest centred square and reported with ``face_detected: false``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from facenet_pytorch import MTCNN

from .config import PipelineSettings
from .transforms import Box


@dataclass(frozen=True)
class Face:
    """A detected face in full-resolution pixel coordinates."""

    box: Box
    probability: float


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

    def detection_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the copy that MTCNN sees."""
        scale = min(1.0, self.settings.detect_max_side / max(width, height))
        return max(1, round(width * scale)), max(1, round(height * scale))

    def detect(self, frames: list[np.ndarray]) -> list[list[Face]]:
        """Faces for each RGB uint8 frame, in the same order."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for position, frame in enumerate(frames):
            height, width = frame.shape[:2]
            groups[self.detection_size(width, height)].append(position)
        found: list[list[Face]] = [[] for _ in frames]
        for (small_w, small_h), positions in groups.items():
            batch = np.stack([self._downscale(frames[p], small_w, small_h) for p in positions])
            with torch.inference_mode():
                boxes, probabilities = self.mtcnn.detect(batch)
            for position, frame_boxes, frame_probs in zip(positions, boxes, probabilities):
                height, width = frames[position].shape[:2]
                found[position] = self._select(frame_boxes, frame_probs, width / small_w, height / small_h, width, height)
        return found

    @staticmethod
    def _downscale(frame: np.ndarray, width: int, height: int) -> np.ndarray:
        if frame.shape[1] == width and frame.shape[0] == height:
            return frame
        return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)

    def _select(
        self, boxes: np.ndarray | None, probabilities: np.ndarray | None,
        scale_x: float, scale_y: float, width: int, height: int,
    ) -> list[Face]:
        if boxes is None or probabilities is None:
            return []
        faces = []
        for box, probability in zip(boxes, probabilities):
            if probability is None or probability < self.settings.min_face_probability:
                continue
            x1 = float(np.clip(box[0] * scale_x, 0, width))
            y1 = float(np.clip(box[1] * scale_y, 0, height))
            x2 = float(np.clip(box[2] * scale_x, 0, width))
            y2 = float(np.clip(box[3] * scale_y, 0, height))
            if x2 - x1 >= 1 and y2 - y1 >= 1:
                faces.append(Face((x1, y1, x2, y2), float(probability)))
        faces.sort(key=lambda face: face.probability, reverse=True)
        return faces[: self.settings.max_faces_per_frame]
