"""A long video's plan and its pieces: the frames to score, chosen once over the whole video, and the pieces
that carry them to TorchServe, cut at keyframes without re-encoding.

The plan is the server's own (``sampling.target_positions`` and ``plan_samples`` on the frame index
``media.index_video`` reads), so a job scores exactly the frames a synchronous request with the same sampling
would. A piece holds up to ``piece_samples`` samples and ``max_piece_bytes``: for each GOP its samples lie in,
the packets from the GOP's keyframe to its last sample there, in decoding order (GOPs without a sample are left
out). The packets are copied into Matroska, which takes every codec the server decodes, and a piece's frames
decode to the same pixels as in the whole file because decoding starts at the same keyframe. Each piece names
its samples by their positions within it (``at_frames``) and knows each frame's position in the original video.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from deepfake_detector.config import PipelineSettings
from deepfake_detector.errors import InputError
from deepfake_detector.media import DEMUXERS, FFMPEG_OPTIONS, VideoIndex
from deepfake_detector.sampling import Sampling, nearest_frame, plan_for

PIECE_FORMAT = "matroska"
PIECE_SUFFIX = ".mkv"


@dataclass
class Piece:
    """One piece of the video: the original positions of its frames (presentation order), of its samples, and
    the samples' original times."""

    number: int
    frames: list[int]
    samples: list[int]
    times: list[float]
    bytes: int = 0

    def sampling(self) -> Sampling:
        """The samples as positions within the piece."""
        return Sampling.at_frames([bisect.bisect_left(self.frames, sample) for sample in self.samples])

    def to_json(self) -> dict[str, Any]:
        ranges: list[list[int]] = []
        for position in self.frames:
            if ranges and ranges[-1][1] == position:
                ranges[-1][1] += 1
            else:
                ranges.append([position, position + 1])
        return {"number": self.number, "ranges": ranges, "samples": self.samples, "times": self.times,
                "bytes": self.bytes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Piece:
        frames = [position for start, stop in data["ranges"] for position in range(start, stop)]
        return cls(data["number"], frames, data["samples"], data["times"], data["bytes"])


@dataclass
class VideoPlan:
    """What a job scores: the video's index, the samples (original positions), how many were wanted, and which
    samples moved to a cheaper frame than the one nearest their time; ``pieces`` once cut."""

    video: VideoIndex
    samples: list[int]
    wanted: int
    moved: list[int]
    pieces: list[Piece] = field(default_factory=list)


def plan_video(video: VideoIndex, sampling: Sampling, settings: PipelineSettings) -> VideoPlan:
    """The frames a request with ``sampling`` would score in this video (``sampling.plan_for``, the server's own
    rule), under ``settings``' limits; InputError for a video that cannot be a job."""
    if not video.seekable:
        raise InputError("no_timestamps", "the video's frames carry no timestamps, so it cannot be cut into pieces; "
                         "send it to /predictions directly", 422)
    wanted, plan = plan_for(sampling, video.frames, settings.max_frames, settings.max_decode_per_sample, True)
    moved = [position for position, target_s, _ in plan if position != nearest_frame(video.frames, target_s)]
    return VideoPlan(video, [position for position, _, _ in plan], len(wanted), moved)


def cut_pieces(path: Path, fmt: str, plan: VideoPlan, folder: Path, piece_samples: int, max_piece_bytes: int
               ) -> list[Piece]:
    """Write the pieces as ``folder/piece-NNNN.mkv``, copying packets (no re-encoding); returns them.

    A sample needs the packets from the keyframe the server would seek to for it (the last keyframe shown before
    it, ``FrameIndex.keyframe_of``) up to its own, in decoding order. A piece holds the union of what its samples
    need; a GOP with more samples than a piece takes is shared by several pieces. A sample that alone needs more
    than ``max_piece_bytes`` (keyframes too far apart) cannot be carried: InputError, before anything is scored.
    """
    packets = _packets(path, fmt, plan.video.timestamps)
    packet_of = {position: number for number, (position, _) in enumerate(packets)}
    sizes = [0]
    for _, size in packets:
        sizes.append(sizes[-1] + size)

    needs: list[list[tuple[int, int]]] = []  # per piece: (first, last) packet ranges, decoding order
    samples: list[list[int]] = []
    for sample in plan.samples:
        need = (packet_of[plan.video.frames.keyframe_of[sample]], packet_of[sample])
        if need[0] > need[1]:
            raise InputError("unsupported_gop", f"the frame at {plan.video.frames.times[sample]:.1f} s is decoded "
                             "before the keyframe shown before it; this video cannot be cut into pieces", 422)
        alone = sizes[need[1] + 1] - sizes[need[0]]
        if alone > max_piece_bytes:
            raise InputError("keyframes_too_sparse", f"the frame at {plan.video.frames.times[sample]:.1f} s needs "
                             f"{alone} bytes from its keyframe, over the {max_piece_bytes}-byte piece limit "
                             "(DEEPFAKE_JOBS_MAX_PIECE_BYTES); re-encode the video with keyframes closer together",
                             422)
        if needs and len(samples[-1]) < piece_samples:
            extended = _union([*needs[-1], need])
            if _bytes(extended, sizes) <= max_piece_bytes:
                needs[-1], samples[-1] = extended, [*samples[-1], sample]
                continue
        needs.append([need])
        samples.append([sample])

    folder.mkdir(parents=True, exist_ok=True)
    wanted_by: dict[int, list[int]] = {}
    for number, ranges in enumerate(needs):
        for first, last in ranges:
            for packet in range(first, last + 1):
                wanted_by.setdefault(packet, []).append(number)
    remaining = [sum(last - first + 1 for first, last in ranges) for ranges in needs]
    writers: dict[int, _PieceWriter] = {}
    pieces: list[Piece] = []
    try:
        with av.open(str(path), format=DEMUXERS[fmt], options=dict(FFMPEG_OPTIONS)) as container:
            stream = container.streams.video[0]
            for number, packet in enumerate(_shown(container.demux(stream))):
                for piece in wanted_by.get(number, ()):
                    if piece not in writers:
                        writers[piece] = _PieceWriter(piece, folder, stream, plan.video.frames.times, samples[piece])
                    writers[piece].write(packet, packets[number][0])
                    remaining[piece] -= 1
                    if remaining[piece] == 0:
                        pieces.append(writers.pop(piece).close())
    finally:
        for writer in writers.values():
            writer.abandon()
    if len(pieces) != len(needs):
        raise InputError("corrupt_media", f"the video ended before its indexed frames: {len(needs) - len(pieces)} "
                         "piece(s) could not be cut", 422)
    plan.pieces = sorted(pieces, key=lambda piece: piece.number)
    return plan.pieces


def _union(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _shown(packets: Iterator[av.Packet]) -> Iterator[av.Packet]:
    """The packets of frames shown: what the frame index counts (``media``)."""
    return (packet for packet in packets if packet.size and not packet.is_discard)


def _packets(path: Path, fmt: str, timestamps: list[int]) -> list[tuple[int, int]]:
    """(frame position, size) of every shown packet, in decoding order."""
    position_of = {stamp: position for position, stamp in enumerate(timestamps)}
    with av.open(str(path), format=DEMUXERS[fmt], options=dict(FFMPEG_OPTIONS)) as container:
        stream = container.streams.video[0]
        return [(position_of[int(packet.pts if packet.pts is not None else packet.dts)], packet.size)
                for packet in _shown(container.demux(stream))]


def _bytes(ranges: list[tuple[int, int]], sizes: list[int]) -> int:
    return sum(sizes[last + 1] - sizes[first] for first, last in ranges)


def piece_path(folder: Path, number: int) -> Path:
    return folder / f"piece-{number:04d}{PIECE_SUFFIX}"


class _PieceWriter:
    def __init__(self, number: int, folder: Path, template: av.video.stream.VideoStream,
                 times: tuple[float, ...], samples: list[int]) -> None:
        self.number = number
        self.times = times
        self.path = piece_path(folder, number)
        self.partial = self.path.with_suffix(".partial")  # a redelivered plan never reads a half-written piece
        self.output = av.open(str(self.partial), "w", format=PIECE_FORMAT)
        self.stream = self.output.add_stream_from_template(template)
        self.frames: list[int] = []
        self.samples = samples
        self.bytes = 0

    def write(self, packet: av.Packet, position: int) -> None:
        self.frames.append(position)
        self.bytes += packet.size
        packet.stream = self.stream
        self.output.mux(packet)

    def abandon(self) -> None:
        self.output.close()
        self.partial.unlink(missing_ok=True)

    def close(self) -> Piece:
        self.output.close()
        os.replace(self.partial, self.path)
        samples = sorted(self.samples)
        return Piece(self.number, sorted(self.frames), samples, [self.times[s] for s in samples],
                     self.path.stat().st_size)
