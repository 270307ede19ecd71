"""Pieces' answers -> one verdict in the original video's frames and times.

A piece's answer names its frames by their position within the piece; :func:`piece_frames` turns them into the
original video's positions and times (the plan knows both). :func:`merge` sorts every piece's frames into one
timeline, links its faces into tracks again over the whole video (``verdict.relink_tracks``, as the server does
for one request) and builds the verdict with the server's own rules, so a job's answer has the schema of a
synchronous video answer and the same numbers for the same frames.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from deepfake_detector.sampling import Sampling
from deepfake_detector.verdict import (
    TIME_DECIMALS,
    Coverage,
    FaceScore,
    FrameScore,
    MediaInfo,
    ModelInfo,
    Verdict,
    relink_tracks,
)


class MergeError(ValueError):
    """A piece's answer does not fit its piece (a frame it was not asked for, another model version)."""


def piece_frames(answer: Verdict, frames: list[int], samples: list[int], times: list[float]) -> dict[str, Any]:
    """What a job keeps of one piece's verdict: its frames at their original positions (``frames`` maps the
    piece's positions; ``times`` are the original times of ``samples``) and what every piece must agree on."""
    time_of = dict(zip(samples, times, strict=True))
    mapped = []
    for frame in answer.frames:
        if frame.index >= len(frames) or frames[frame.index] not in time_of:
            raise MergeError(f"the answer has frame {frame.index} of the piece, which was not asked for")
        original = frames[frame.index]
        mapped.append(FrameScore(original, frame.fake_probability, frame.faces, frame.face_search,
                                 frame.faces_left_out, round(time_of[original], TIME_DECIMALS)).to_json())
    return {"model": answer.model.to_json(), "threshold": answer.threshold, "aggregation": answer.aggregation,
            "min_track_frames": answer.min_track_frames, "width": answer.media.width,
            "height": answer.media.height, "frames": mapped, "left_out": len(samples) - len(mapped)}


def timeline_frames(pieces: Iterable[dict[str, Any]]) -> list[FrameScore]:
    """Every piece's frames in time order, faces linked into tracks over all of them."""
    frames = []
    for piece in pieces:
        for data in piece["frames"]:
            problems: list[str] = []
            faces = tuple(FaceScore.from_json(face, "face", problems) for face in data["faces"])
            if problems:
                raise MergeError("; ".join(problems))
            frames.append(FrameScore(data["index"], data["fake_probability"], faces,  # type: ignore[arg-type]
                                     data["face_search"], data["faces_left_out"], data["time_s"]))
    return relink_tracks(sorted(frames, key=lambda frame: frame.index))


def merge(pieces: list[dict[str, Any]], fmt: str, fps: float, frames_total: int, duration_s: float,
          sampling: Sampling, samples_wanted: int, moved: set[int]) -> Verdict:
    """The job's verdict from all its pieces (``piece_frames``), for a video of ``frames_total`` frames; ``moved``
    are the positions of samples the plan moved to a cheaper frame (counted among the frames scored, as the
    server counts them)."""
    if not pieces:
        raise MergeError("no piece was scored")
    first = pieces[0]
    for piece in pieces[1:]:
        for key in ("model", "threshold", "aggregation", "min_track_frames"):
            if piece[key] != first[key]:
                raise MergeError(f"pieces disagree on {key}: {first[key]!r} and {piece[key]!r}")
    frames = timeline_frames(pieces)
    if not frames:
        raise MergeError("no sampled frame could be decoded")
    model = first["model"]
    media = MediaInfo("video", fmt, first["width"], first["height"], frames_total, fps or None)
    coverage = Coverage(round(duration_s, TIME_DECIMALS), frames_total, sum(frame.index in moved for frame in frames),
                        samples_wanted - len(frames))
    return Verdict.of_video(frames, first["threshold"], media,
                            ModelInfo(model["name"], model["version"], model["backbone"], model["trained"],
                                      model.get("compute", "cpu/fp32")),
                            sampling, first["aggregation"], first["min_track_frames"], coverage)


def partial_timeline(pieces: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The frames scored so far, for a running job's status (tracks linked over what is there)."""
    return {"frames": [frame.to_json() for frame in timeline_frames(pieces)]}
