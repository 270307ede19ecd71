"""Measure ways to fetch frames spread over a whole video: OpenCV's and PyAV's seeking against decoding it all.

    python -m deepfake_ops.seeking     # makes a 10 s and a 10 min 720p H.264 video in reports/media, prints a table

The video decoder is to sample frames uniformly over a whole video instead of its first seconds; this says which
way is fast and which returns the frame asked for. Each method fetches ``samples`` frames whose times are spread
uniformly from the first frame to the last, as RGB arrays:

* ``opencv-sequential``: one pass, ``read()`` the wanted frames and ``grab()`` the rest (the product's decoder
  until whole-input coverage).
* ``opencv-seek-frames`` / ``opencv-seek-msec``: set ``CAP_PROP_POS_FRAMES`` / ``CAP_PROP_POS_MSEC``, ``read()``.
* ``pyav-exact``: seek to the keyframe at or before the target, decode forward to the target's timestamp.
* ``pyav-keyframe``: the same seek, take the first frame decoded (the keyframe, up to a GOP early).
* ``pyav-sequential``: decode every frame in order, convert only the wanted ones.

Ground truth comes from one sequential PyAV decode: every frame's timestamp and a small thumbnail, and the
targets' full RGB frames. A returned frame is exact when it differs from the target's RGB by less than half a grey
level on average (OpenCV and PyAV decode the same frame to equal pixels). PyAV gives each frame's timestamp;
OpenCV does not, so a frame of its that is not the target is found by pixels among the frames near the target
(the test videos loop their frames, so the same pixels recur; the nearest counts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from deepfake_detector.media import DEMUXERS, FFMPEG_OPTIONS, sniff_format

from . import load_media

OPENCV_CAPTURE_OPTIONS = "protocol_whitelist;file|format_whitelist;avi,mov,matroska"
PYAV_THREADS = ("AUTO", 0)
"""(``thread_type``, ``thread_count``) for PyAV's decoder; the best of those ``measure_pyav_threads`` tries."""
THREAD_SETTINGS = [("SLICE", 0), ("FRAME", 0), ("AUTO", 0), ("FRAME", 2), ("AUTO", 1)]
EXACT_GREY_LEVELS = 0.5
"""Mean abs RGB difference below which a frame is the target: the same frame decoded by OpenCV and PyAV differs by
0, neighbouring frames of the still stretches of the carphone video by 1.1."""
THUMB_SIZE = (64, 36)
METHODS = ["opencv-sequential", "opencv-seek-frames", "opencv-seek-msec", "pyav-exact", "pyav-keyframe",
           "pyav-sequential"]


@dataclass(frozen=True)
class SeekResult:
    """One method on one video: its speed, and how close the frames it returned were to those asked for."""

    method: str
    seconds_per_frame: float
    """Median over the repeats of the time to open the video and fetch every sample, divided by ``samples``."""
    frames_decoded: int | None
    """Frames the decoder produced (read or grabbed, for OpenCV's pass); None where OpenCV hides it."""
    exact_frames: int
    samples: int
    max_time_error_s: float


@dataclass(frozen=True)
class GroundTruth:
    """Every frame's time in presentation order, its luma thumbnail, and the chosen targets' RGB frames."""

    times: np.ndarray
    pts: list[int]
    time_base: Fraction
    fps: float
    thumbs: np.ndarray
    targets: list[int]
    target_rgb: list[np.ndarray]


@dataclass
class Fetched:
    frames: list[np.ndarray]
    times: list[float | None]
    decoded: int | None


def demuxer(video: Path) -> str:
    """The demuxer the product opens this file with (from its first bytes, as the server sniffs them)."""
    with open(video, "rb") as handle:
        sniffed = sniff_format(handle.read(64))
    if sniffed is None or sniffed[0] != "video":
        raise ValueError(f"{video} is not a video the server accepts")
    return DEMUXERS[sniffed[1]]


def open_pyav(video: Path, thread_type: str = PYAV_THREADS[0],
              thread_count: int = PYAV_THREADS[1]) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """The file opened as the product must: named demuxer, file protocol only."""
    container = av.open(str(video), format=demuxer(video), options=dict(FFMPEG_OPTIONS))
    stream = container.streams.video[0]
    stream.thread_type = thread_type
    stream.thread_count = thread_count
    return container, stream


def open_opencv(video: Path) -> cv2.VideoCapture:
    """The file opened with OpenCV's FFmpeg backend and the product's whitelists (read again at each open)."""
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = OPENCV_CAPTURE_OPTIONS
    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise RuntimeError(f"OpenCV could not open {video}")
    return capture


def frame_time(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> float | None:
    # pts can be missing (raw streams, some AVI); the decoder's best-effort guess is the next best thing.
    pts = frame.pts if frame.pts is not None else getattr(frame, "best_effort_timestamp", None)
    return None if pts is None else float(pts * stream.time_base)


def _thumb(gray: np.ndarray) -> np.ndarray:
    """A 64x36 thumbnail scaled to zero mean and unit spread, so luma and RGB-derived grey compare alike."""
    small = cv2.resize(gray, THUMB_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)
    return ((small - small.mean()) / (small.std() + 1e-6)).astype(np.float16)


def _y_plane(frame: av.VideoFrame) -> np.ndarray:
    plane = frame.planes[0]
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:frame.height, :frame.width]


def uniform_targets(count: int, samples: int) -> list[int]:
    """Frame indices, in presentation order, spread uniformly from the first frame to the last."""
    if samples <= 1:
        return [0]
    return sorted({round(i * (count - 1) / (samples - 1)) for i in range(samples)})


def ground_truth(video: Path, samples: int) -> GroundTruth:
    """Timestamps from the packets (no decoding), then one decode: every frame's thumbnail, the targets' RGB."""
    container, stream = open_pyav(video)
    with container:
        pts = sorted(packet.pts for packet in container.demux(stream) if packet.pts is not None)
        if not pts:
            raise RuntimeError(f"{video}: no video packets with timestamps")
        targets = uniform_targets(len(pts), samples)
        wanted = {pts[i] for i in targets}
        container.seek(pts[0], stream=stream, backward=True, any_frame=False)
        thumbs: dict[int, np.ndarray] = {}
        rgb: dict[int, np.ndarray] = {}
        for frame in container.decode(stream):
            if frame.pts is None:
                raise RuntimeError(f"{video}: a decoded frame without a timestamp")
            thumbs[frame.pts] = _thumb(_y_plane(frame))
            if frame.pts in wanted:
                rgb[frame.pts] = frame.to_ndarray(format="rgb24")
        rate = stream.average_rate or stream.guessed_rate or 25
        time_base = Fraction(stream.time_base)
    missing = [p for p in pts if p not in thumbs]
    if missing:
        raise RuntimeError(f"{video}: {len(missing)} packets decoded to no frame (first pts {missing[0]})")
    return GroundTruth(np.array([float(p * time_base) for p in pts]), pts, time_base, float(rate),
                       np.stack([thumbs[p] for p in pts]), targets, [rgb[pts[i]] for i in targets])


# Methods: each opens the video, fetches the targets and returns the RGB frames with the times it claims.


def opencv_sequential(video: Path, truth: GroundTruth) -> Fetched:
    capture = open_opencv(video)
    wanted, frames, index = set(truth.targets), [], 0
    try:
        while index <= truth.targets[-1]:
            if index in wanted:
                ok, bgr = capture.read()
                if not ok:
                    break
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            elif not capture.grab():
                break
            index += 1
    finally:
        capture.release()
    return Fetched(frames, [None] * len(frames), index)


def _opencv_seek(video: Path, positions: list[float], prop: int) -> Fetched:
    capture = open_opencv(video)
    frames = []
    try:
        for position in positions:
            capture.set(prop, position)
            ok, bgr = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    return Fetched(frames, [None] * len(frames), None)


def opencv_seek_frames(video: Path, truth: GroundTruth) -> Fetched:
    return _opencv_seek(video, [float(i) for i in truth.targets], cv2.CAP_PROP_POS_FRAMES)


def opencv_seek_msec(video: Path, truth: GroundTruth) -> Fetched:
    start = truth.times[0]
    return _opencv_seek(video, [(truth.times[i] - start) * 1000 for i in truth.targets], cv2.CAP_PROP_POS_MSEC)


def _frames_after_seek(container: av.container.InputContainer, stream: av.video.stream.VideoStream, offset: int,
                       keyframe_dts: list[int], decoded: list[int]) -> Iterator[av.VideoFrame]:
    """Seek to the keyframe at or before ``offset`` (stream time base); note its dts, count the frames."""
    container.seek(offset, stream=stream, backward=True, any_frame=False)
    for packet in container.demux(stream):
        if not keyframe_dts and packet.dts is not None:
            keyframe_dts.append(packet.dts)
        for frame in packet.decode():
            decoded[0] += 1
            if frame.pts is not None:
                yield frame


def _pyav_seek(container: av.container.InputContainer, stream: av.video.stream.VideoStream, target: int,
               exact: bool, decoded: list[int]) -> av.VideoFrame | None:
    """The frame at ``target`` pts (or the keyframe before it), seeking earlier if the seek lands after it.

    mov seeks by decode timestamps: with B-frames a keyframe's dts is before its pts, so asking for a frame just
    before a keyframe can land on that keyframe, after the target. Then seek again from before its dts.
    """
    offset = target
    for _ in range(8):
        keyframe_dts: list[int] = []
        frames = _frames_after_seek(container, stream, offset, keyframe_dts, decoded)
        first = next(frames, None)
        if first is None:
            return None
        if first.pts > target:
            if not keyframe_dts:
                return None
            offset = min(offset, keyframe_dts[0]) - 1
            continue
        if not exact or first.pts >= target:
            return first
        return next((frame for frame in frames if frame.pts >= target), None)
    return None


def _pyav_seeking(video: Path, truth: GroundTruth, exact: bool, threads: tuple[str, int]) -> Fetched:
    container, stream = open_pyav(video, *threads)
    frames, times, decoded = [], [], [0]
    with container:
        for index in truth.targets:
            frame = _pyav_seek(container, stream, truth.pts[index], exact, decoded)
            if frame is None:
                break
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(frame_time(frame, stream))
    return Fetched(frames, times, decoded[0])


def pyav_exact(video: Path, truth: GroundTruth, threads: tuple[str, int] = PYAV_THREADS) -> Fetched:
    return _pyav_seeking(video, truth, True, threads)


def pyav_keyframe(video: Path, truth: GroundTruth, threads: tuple[str, int] = PYAV_THREADS) -> Fetched:
    return _pyav_seeking(video, truth, False, threads)


def pyav_sequential(video: Path, truth: GroundTruth, threads: tuple[str, int] = PYAV_THREADS) -> Fetched:
    container, stream = open_pyav(video, *threads)
    wanted = {truth.pts[i] for i in truth.targets}
    found: dict[int, np.ndarray] = {}
    decoded = 0
    with container:
        for frame in container.decode(stream):
            decoded += 1
            if frame.pts in wanted:
                found[frame.pts] = frame.to_ndarray(format="rgb24")
                if len(found) == len(wanted):
                    break
    order = sorted(found)
    return Fetched([found[p] for p in order], [float(p * truth.time_base) for p in order], decoded)


FETCHERS: dict[str, Callable[[Path, GroundTruth], Fetched]] = {
    "opencv-sequential": opencv_sequential,
    "opencv-seek-frames": opencv_seek_frames,
    "opencv-seek-msec": opencv_seek_msec,
    "pyav-exact": pyav_exact,
    "pyav-keyframe": pyav_keyframe,
    "pyav-sequential": pyav_sequential,
}


def identify_time(video: Path, rgb: np.ndarray, truth: GroundTruth, target: int, window_s: float = 2.0) -> float:
    """The time of the frame ``rgb`` is, for a frame that is not the ``target``: OpenCV does not say.

    Pixels against every frame decoded within ``window_s`` of the target (of equal frames, the looped test videos
    hold several, the nearest); failing that, the best thumbnail match over the whole video, which can be a frame
    or two off in still stretches.
    """
    wanted = truth.times[target]
    nearest: float | None = None
    container, stream = open_pyav(video)
    with container:
        first = int(np.searchsorted(truth.times, wanted - window_s))
        container.seek(truth.pts[first], stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            at = frame_time(frame, stream)
            if at is None or at < wanted - window_s:
                continue
            if at > wanted + window_s:
                break
            if abs(at - wanted) > 0 and np.abs(frame.to_ndarray(format="rgb24").astype(np.int16) - rgb).mean() \
                    < EXACT_GREY_LEVELS and (nearest is None or abs(at - wanted) < abs(nearest - wanted)):
                nearest = at
    if nearest is not None:
        return nearest
    query = _thumb(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)).astype(np.float32)
    diffs = np.abs(truth.thumbs.astype(np.float32) - query).mean(axis=(1, 2))
    diffs[target] = np.inf
    matches = np.flatnonzero(diffs <= diffs.min() + 0.02)
    return float(truth.times[matches[np.argmin(np.abs(truth.times[matches] - wanted))]])


def _score(video: Path, fetched: Fetched, truth: GroundTruth) -> tuple[int, float]:
    exact, worst = 0, 0.0
    for position, index in enumerate(truth.targets):
        if position >= len(fetched.frames):
            worst = float("inf")  # a frame the method could not return
            continue
        rgb, wanted = fetched.frames[position], truth.target_rgb[position]
        if rgb.shape == wanted.shape and np.abs(rgb.astype(np.int16) - wanted).mean() < EXACT_GREY_LEVELS:
            exact += 1
            if fetched.times[position] is None:
                continue  # OpenCV gives no time: by pixels it is the target
        claimed = fetched.times[position]
        returned = claimed if claimed is not None else identify_time(video, rgb, truth, index)
        worst = max(worst, abs(returned - truth.times[index]))
    return exact, float(worst)


def _measure(video: Path, truth: GroundTruth, name: str, fetch: Callable[[Path, GroundTruth], Fetched],
             repeats: int) -> SeekResult:
    durations, fetched = [], None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fetched = fetch(video, truth)
        durations.append(time.perf_counter() - start)
    assert fetched is not None
    exact, worst = _score(video, fetched, truth)
    return SeekResult(name, statistics.median(durations) / len(truth.targets), fetched.decoded, exact,
                      len(truth.targets), worst)


def measure_seeking(video: Path, samples: int = 32, repeats: int = 3,
                    methods: list[str] | None = None) -> list[SeekResult]:
    """Each method (all by default) fetching ``samples`` frames spread over ``video``, timed ``repeats`` times."""
    video = Path(video)
    return _measure_methods(video, ground_truth(video, samples), repeats, methods)


def _measure_methods(video: Path, truth: GroundTruth, repeats: int, methods: list[str] | None = None,
                     ) -> list[SeekResult]:
    return [_measure(video, truth, name, FETCHERS[name], repeats) for name in methods or METHODS]


def measure_pyav_threads(video: Path, samples: int = 32, repeats: int = 3,
                         settings: list[tuple[str, int]] | None = None) -> list[SeekResult]:
    """PyAV's seeking methods under each (``thread_type``, ``thread_count``), named ``pyav-exact[FRAME,0]``."""
    video = Path(video)
    return _measure_threads(video, ground_truth(video, samples), repeats, settings)


def _measure_threads(video: Path, truth: GroundTruth, repeats: int,
                     settings: list[tuple[str, int]] | None = None) -> list[SeekResult]:
    results = []
    for thread_type, count in settings or THREAD_SETTINGS:
        for name, fetch in (("pyav-exact", pyav_exact), ("pyav-keyframe", pyav_keyframe)):
            results.append(_measure(video, truth, f"{name}[{thread_type},{count}]",
                                    lambda v, t, f=fetch, s=(thread_type, count): f(v, t, s), repeats))
    return results


def markdown_table(short: list[SeekResult], long: list[SeekResult], short_name: str = "10 s clip",
                   long_name: str = "10 min") -> str:
    lines = [f"| method | {short_name} ms/frame | {long_name} ms/frame | long/short | exact frames (short, long) "
             "| max time error s (short, long) | frames decoded (short, long) |",
             "|---|---:|---:|---:|---|---|---|"]
    for s, lg in zip(short, long):
        lines.append(f"| {s.method} | {s.seconds_per_frame * 1000:.1f} | {lg.seconds_per_frame * 1000:.1f} "
                     f"| {lg.seconds_per_frame / s.seconds_per_frame:.1f} | {s.exact_frames}/{s.samples}, "
                     f"{lg.exact_frames}/{lg.samples} | {s.max_time_error_s:.3f}, {lg.max_time_error_s:.3f} "
                     f"| {s.frames_decoded}, {lg.frames_decoded} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=load_media.DEFAULT_MEDIA_DIR, help="media folder")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the long video (default 10)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", action="store_true", help="also compare PyAV's decoder thread settings")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    short_video = load_media.long_video(args.dir, 10)
    long_video = load_media.long_video(args.dir, args.minutes * 60)
    print(f"videos ready ({time.perf_counter() - start:.1f} s): {short_video.name}, {long_video.name}", flush=True)
    truths = [ground_truth(video, args.samples) for video in (short_video, long_video)]
    print(f"ground truth ready ({time.perf_counter() - start:.1f} s)", flush=True)
    names = ("10 s clip", f"{args.minutes:g} min")
    short, long = (_measure_methods(video, truth, args.repeats) for video, truth in zip((short_video, long_video),
                                                                                         truths))
    print(markdown_table(short, long, *names), flush=True)
    if args.threads:
        print()
        print(markdown_table(*(_measure_threads(video, truth, args.repeats)
                               for video, truth in zip((short_video, long_video), truths)), *names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
