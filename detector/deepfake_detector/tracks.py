"""Face tracks: one person's faces linked across a video's sampled frames.

Samples can lie seconds apart, so linking uses geometry only: a face continues the track whose last box
overlaps it (IoU at least ``MIN_IOU``) or whose centre lies within ``MAX_CENTER_SHIFT`` box sides of its
own. Each frame's faces are matched to tracks greedily, best match first, one face per track per frame;
a face that continues none starts a new track. Tracks stay open for the whole video, so a person who
leaves the picture and comes back at the same place keeps the id. Standard library only, like the verdict whose
``track_id`` it fills.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Box = tuple[float, float, float, float]
MIN_IOU = 0.3
MAX_CENTER_SHIFT = 0.5


def link_tracks(frames: Sequence[Sequence[Box]]) -> list[list[int]]:
    """A track id for every face of every frame (same shape as ``frames``), ids numbered from 0 in order of
    first appearance."""
    last_box: list[Box] = []
    ids: list[list[int]] = []
    for boxes in frames:
        pairs = sorted(((_affinity(last_box[track], box), track, face) for track in range(len(last_box))
                        for face, box in enumerate(boxes)), reverse=True)
        frame_ids = [-1] * len(boxes)
        taken: set[int] = set()
        for affinity, track, face in pairs:
            if affinity > 0 and track not in taken and frame_ids[face] < 0:
                frame_ids[face] = track
                taken.add(track)
        for face, box in enumerate(boxes):
            if frame_ids[face] < 0:
                frame_ids[face] = len(last_box)
                last_box.append(box)
            else:
                last_box[frame_ids[face]] = box
        ids.append(frame_ids)
    return ids


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _affinity(previous: Box, box: Box) -> float:
    """Above 0 when ``box`` may continue the track last seen at ``previous``; larger is a better match."""
    overlap = iou(previous, box)
    side = (max(previous[2] - previous[0], previous[3] - previous[1]) + max(box[2] - box[0], box[3] - box[1])) / 2
    shift = math.dist(((previous[0] + previous[2]) / 2, (previous[1] + previous[3]) / 2),
                      ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)) / max(side, 1e-9)
    if overlap < MIN_IOU and shift > MAX_CENTER_SHIFT:
        return 0.0
    return overlap + max(0.0, 1.0 - shift)
