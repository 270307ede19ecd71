"""Whether the product's face search finds facenet-pytorch's faces: the same boxes and probabilities.

The product runs MTCNN its own way (``deepfake_detector.mtcnn.Mtcnn``: summed-area resampling, OpenVINO or
PyTorch networks). This module holds it to ``MTCNN.detect`` of facenet-pytorch, the definition, on the very
copies the product searches (the first search's copy of each photo or frame and, where that finds no face
and the second look would search another copy, the second look's), in the product's batches (frames whose
copies share a size go through together). A copy matches when both find the same number of faces and every
box corner lies within :data:`BOX_TOLERANCE_PX` and every probability within :data:`PROBABILITY_TOLERANCE`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from deepfake_detector.faces import FaceDetector, detection_size, second_look_size, shrink

BOX_TOLERANCE_PX = 0.5
"""Largest difference of a box corner, in pixels of the copy searched."""
PROBABILITY_TOLERANCE = 1e-4
"""Largest difference of a face's probability."""


@dataclass
class ParityReport:
    """How far the product's detections lie from facenet-pytorch's, over every copy compared."""

    copies: int = 0
    faces: int = 0
    largest_box_px: float = 0.0
    largest_probability: float = 0.0
    mismatched: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not self.mismatched

    def to_json(self) -> dict[str, object]:
        return {"copies": self.copies, "faces": self.faces, "largest_box_px": self.largest_box_px,
                "largest_probability": self.largest_probability, "mismatched": self.mismatched,
                "box_tolerance_px": BOX_TOLERANCE_PX, "probability_tolerance": PROBABILITY_TOLERANCE}


def compare_with_facenet(detector: FaceDetector, images: dict[str, np.ndarray]) -> ParityReport:
    """``detector``'s MTCNN against facenet-pytorch's ``MTCNN.detect`` on the copies it searches in ``images``."""
    settings = detector.settings

    def first_copy(width: int, height: int) -> tuple[int, int]:
        return detection_size(width, height, settings)

    def second_copy(width: int, height: int) -> tuple[int, int]:
        return second_look_size(width, height, settings)

    report = ParityReport()
    _compare(detector, _copies(images, first_copy, ""), report)
    found = detector.detect(list(images.values()))
    looked_again = {name: image for (name, image), result in zip(images.items(), found)
                    if result.search != "first" and detector.second_look_differs(image)}
    _compare(detector, _copies(looked_again, second_copy, " (second look)"), report)
    return report


def _copies(images: dict[str, np.ndarray], size_of: Callable[[int, int], tuple[int, int]], suffix: str
            ) -> dict[tuple[int, int], list[tuple[str, np.ndarray]]]:
    """The copies the search makes of ``images``, grouped by size as the product batches them."""
    groups: dict[tuple[int, int], list[tuple[str, np.ndarray]]] = defaultdict(list)
    for name, image in images.items():
        height, width = image.shape[:2]
        small_w, small_h = size_of(width, height)
        groups[(small_w, small_h)].append((name + suffix, shrink(image, small_w, small_h)))
    return groups


def _compare(detector: FaceDetector, groups: dict[tuple[int, int], list[tuple[str, np.ndarray]]],
             report: ParityReport) -> None:
    for members in groups.values():
        batch = np.stack([copy for _, copy in members])
        boxes, probabilities = detector.stages.detect(batch)
        with torch.inference_mode():
            want_boxes, want_probabilities = detector.mtcnn.detect(batch)
        for (name, _), got, got_p, want, want_p in zip(members, boxes, probabilities, want_boxes,
                                                        want_probabilities, strict=True):
            report.copies += 1
            got = np.zeros((0, 4)) if got is None else got
            want = np.zeros((0, 4)) if want is None else np.asarray(want, dtype=np.float32)
            if got.shape != want.shape:
                report.mismatched.append(f"{name}: {len(got)} faces, facenet-pytorch {len(want)}")
                continue
            report.faces += len(got)
            if not len(got):
                continue
            box = float(np.abs(got - want).max())
            probability = float(np.abs(np.asarray(got_p) - np.asarray(want_p, dtype=np.float32)).max())
            report.largest_box_px = max(report.largest_box_px, box)
            report.largest_probability = max(report.largest_probability, probability)
            if box > BOX_TOLERANCE_PX or probability > PROBABILITY_TOLERANCE:
                report.mismatched.append(f"{name}: box {box:.3g} px, probability {probability:.3g}")
