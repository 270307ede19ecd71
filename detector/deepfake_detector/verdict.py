"""The verdict: what the detector answers for one image or video, as types with one JSON form.

Everything that produces or reads an answer goes through these classes: the pipeline builds a
:class:`Verdict`, the handler serialises it with :meth:`Verdict.to_json`, and the audit log, the metrics,
the golden requests, rollout verification, the A/B comparison, the load tests and evaluation read it back
with :meth:`Verdict.from_json`, which also validates it. The scoring rules live here, once:

* a frame scores as its most-fake face (:func:`frame_probability`): one manipulated face makes it fake;
* a video scores by :func:`video_probability`: by default as its most-fake person (``tracks``: a person's
  score is the highest level it holds over ``min_track_frames`` consecutive samples of them, so a manipulated
  stretch anywhere counts and one stray frame does not flip it), or as the mean, max or median of its frames;
* a video's faces are linked into tracks from their reported boxes (:func:`relink_tracks`);
* a video's segments are the stretches whose sampled frames score at or above the threshold
  (:func:`find_segments`);
* FAKE when the fake probability is at or above the threshold (:func:`label_for`), and the confidence is
  the probability of the reported label.

Standard library only, so a load-test client can import it without the network's dependencies.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .sampling import Sampling
from .tracks import link_tracks

Label = Literal["REAL", "FAKE"]
MediaKind = Literal["image", "video"]
Aggregation = Literal["tracks", "mean", "max", "median"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
FaceSearch = Literal["first", "second_look", "none"]
"""Which search found a frame's faces (``faces``): the first, the second look, or neither (the centre crop)."""
FACE_SEARCHES: tuple[str, ...] = get_args(FaceSearch)
TIME_DECIMALS = 3
BOX_DECIMALS = 1
"""Face boxes are reported in pixels to one decimal: finer would only report MTCNN's noise."""
DETECTION_DECIMALS = 4
DEFAULT_COMPUTE = "cpu/fp32"
"""``device/precision`` of the network's forward pass when nothing else is said."""


class VerdictError(ValueError):
    """A JSON answer that is not a valid verdict; ``problems`` lists every violation found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# ------------------------------------------------------------------------------------------ scoring rules


def frame_probability(face_probabilities: Sequence[float]) -> float:
    """A frame's fake probability from those of its scored crops: the most-fake face decides."""
    if not face_probabilities:
        raise ValueError("a frame needs at least one scored crop (a face, or the centre crop)")
    return float(max(face_probabilities))


def aggregate(values: Sequence[float], method: str) -> float:
    """The mean, max or median of sampled frames' (or a track's) probabilities."""
    if method == "mean":
        return float(statistics.fmean(values))
    if method == "max":
        return float(max(values))
    if method == "median":
        return float(statistics.median(values))
    raise ValueError(f"unknown aggregation {method!r}; use {', '.join(AGGREGATIONS)}")


def video_probability(frames: Sequence[FrameScore], method: str, min_track_frames: int = 2) -> float:
    """A video's fake probability from its sampled frames: the one rule the server, evaluation, the golden
    requests, the A/B comparison and the load tests share.

    ``tracks``: the highest :func:`track_score` among the tracks seen in at least ``min_track_frames`` frames
    (all tracks when none is); a video without any face scores as the mean of its centre crops. ``mean``,
    ``max``, ``median``: of the frames' probabilities.
    """
    if method != "tracks":
        return aggregate([frame.fake_probability for frame in frames], method)
    tracks = find_tracks(frames, min_track_frames)
    if not tracks:
        return aggregate([frame.fake_probability for frame in frames], "mean")
    deciding = [track for track in tracks if len(track.frames) >= min_track_frames] or tracks
    return max(track.fake_probability for track in deciding)


def track_score(probabilities: Sequence[float], min_track_frames: int) -> float:
    """A person's fake probability: the highest level their faces' scores hold over ``min_track_frames``
    consecutive samples of them (the best window's lowest score). A manipulated stretch of any length in a
    long video raises it as high as the stretch scores; one stray frame cannot (its window holds a clean one)."""
    window = max(1, min(min_track_frames, len(probabilities)))
    return max(min(probabilities[start:start + window]) for start in range(len(probabilities) - window + 1))


def label_for(fake_probability: float, threshold: float) -> Label:
    """FAKE at or above the threshold, REAL below it."""
    return "FAKE" if fake_probability >= threshold else "REAL"


def confidence_of(fake_probability: float, label: Label) -> float:
    """The probability of the reported label."""
    return fake_probability if label == "FAKE" else 1.0 - fake_probability


# ------------------------------------------------------------------------------------------------- types


@dataclass(frozen=True)
class FaceScore:
    """One scored face: its box in the full-resolution frame, MTCNN's confidence, and its fake probability."""

    box: tuple[float, float, float, float]
    detection_probability: float
    fake_probability: float
    track_id: int | None = None
    """Videos: the face track this face belongs to (``tracks``)."""

    @classmethod
    def reported(cls, box: Sequence[float], detection_probability: float, fake_probability: float,
                 track_id: int | None = None) -> FaceScore:
        """A face at the precision the answer reports (boxes to 0.1 px, detection to 1e-4)."""
        return cls(tuple(round(float(v), BOX_DECIMALS) for v in box),  # type: ignore[arg-type]
                   round(float(detection_probability), DETECTION_DECIMALS), float(fake_probability), track_id)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"box": list(self.box), "detection_probability": self.detection_probability,
                                "fake_probability": self.fake_probability}
        if self.track_id is not None:
            data["track_id"] = self.track_id
        return data

    @classmethod
    def from_json(cls, data: Any, where: str, problems: list[str]) -> FaceScore | None:
        if not isinstance(data, Mapping):
            problems.append(f"{where} is not an object")
            return None
        box = data.get("box")
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            problems.append(f"{where}.box is not four numbers")
            return None
        if not (box[0] < box[2] and box[1] < box[3]):
            problems.append(f"{where}.box {box} is empty")
        probabilities = [data.get(key) for key in ("detection_probability", "fake_probability")]
        for key, value in zip(("detection_probability", "fake_probability"), probabilities, strict=True):
            if not _is_probability(value):
                problems.append(f"{where}.{key} is not a probability ({value!r})")
        track_id = data.get("track_id")
        if track_id is not None and not _is_int(track_id):
            problems.append(f"{where}.track_id is not a whole number ({track_id!r})")
        if not all(_is_probability(value) for value in probabilities):
            return None
        return cls(tuple(float(v) for v in box), float(probabilities[0]), float(probabilities[1]),  # type: ignore
                   track_id)


@dataclass(frozen=True)
class FrameScore:
    """One scored frame (an image is a single frame, index 0): its faces, or none and a centre crop; which
    face search found them (``first``, ``second_look``, ``none``), how many faces the per-frame bound left
    out, and for a video frame its time in seconds from the first frame."""

    index: int
    fake_probability: float
    faces: tuple[FaceScore, ...] = ()
    face_search: FaceSearch = "first"
    faces_left_out: int = 0
    time_s: float | None = None

    @classmethod
    def scored(cls, index: int, faces: Sequence[FaceScore], center_probability: float | None = None,
               face_search: FaceSearch | None = None, faces_left_out: int = 0, time_s: float | None = None
               ) -> FrameScore:
        """A frame scored as its most-fake face, or as its centre crop when no face was found."""
        if faces:
            probability = frame_probability([face.fake_probability for face in faces])
        elif center_probability is not None:
            probability = float(center_probability)
        else:
            raise ValueError(f"frame {index} has neither faces nor a centre-crop score")
        search = face_search or ("first" if faces else "none")
        return cls(index, probability, tuple(faces), search, faces_left_out,
                   None if time_s is None else round(float(time_s), TIME_DECIMALS))

    @property
    def face_detected(self) -> bool:
        """False: no face in the frame, its centre crop was scored."""
        return bool(self.faces)

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "time_s": self.time_s, "fake_probability": self.fake_probability,
                "face_detected": self.face_detected, "face_search": self.face_search,
                "faces_left_out": self.faces_left_out, "faces": [face.to_json() for face in self.faces]}


@dataclass(frozen=True)
class Track:
    """One person across the sampled frames: their frames, times and score (:func:`track_score`)."""

    id: int
    frames: tuple[int, ...]
    fake_probability: float
    start_s: float | None
    end_s: float | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "frames": list(self.frames), "start_s": self.start_s, "end_s": self.end_s,
                "fake_probability": self.fake_probability}


@dataclass(frozen=True)
class Segment:
    """A stretch whose sampled frames score at or above the threshold. ``start_s`` and ``end_s`` are the
    nearest samples below it on either side (or the video's ends): what the samples say the manipulated
    stretch lies within. ``frames`` flagged samples, the most fake of them at ``peak_s``."""

    start_s: float
    end_s: float
    peak_s: float
    peak_probability: float
    frames: int

    def to_json(self) -> dict[str, Any]:
        return {"start_s": self.start_s, "end_s": self.end_s, "peak_s": self.peak_s,
                "peak_probability": self.peak_probability, "frames": self.frames}


@dataclass(frozen=True)
class Coverage:
    """What the frames alone do not say of the part of a video looked at: its length (from its timestamps) and
    frames, how many samples moved to a cheaper nearby frame, and how many the decoder could not deliver (a
    frame that failed to decode, or the decoding budget spent). The answer's ``coverage`` block adds the first
    and last sampled times and the number of samples, from the frames (:meth:`to_json`)."""

    duration_s: float
    frames_total: int
    samples_moved: int = 0
    samples_left_out: int = 0

    def to_json(self, frames: Sequence[FrameScore]) -> dict[str, Any]:
        return {"start_s": frames[0].time_s, "end_s": frames[-1].time_s, "duration_s": self.duration_s,
                "frames_total": self.frames_total, "frames_sampled": len(frames),
                "samples_moved": self.samples_moved, "samples_left_out": self.samples_left_out}


def find_segments(frames: Sequence[FrameScore], threshold: float, duration_s: float) -> list[Segment]:
    """The stretches of consecutive sampled frames at or above ``threshold`` (``Segment``)."""
    segments: list[Segment] = []
    times = [frame.time_s or 0.0 for frame in frames]
    start = None
    for position, frame in enumerate([*frames, None]):
        flagged = frame is not None and frame.fake_probability >= threshold
        if flagged and start is None:
            start = position
        elif not flagged and start is not None:
            run = range(start, position)
            peak = max(run, key=lambda p: frames[p].fake_probability)
            segments.append(Segment(times[start - 1] if start else 0.0,
                                    times[position] if position < len(frames) else round(duration_s, TIME_DECIMALS),
                                    times[peak], frames[peak].fake_probability, len(run)))
            start = None
    return segments


def relink_tracks(frames: Sequence[FrameScore]) -> list[FrameScore]:
    """The frames with every face's ``track_id`` linked afresh from the reported boxes (``tracks``), in order:
    the server links a video's faces this way, and so does the job service for a timeline it merges from
    pieces of a video, so both give the same ids."""
    ids = link_tracks([[face.box for face in frame.faces] for frame in frames])
    return [dataclasses.replace(frame, faces=tuple(dataclasses.replace(face, track_id=track)
                                                   for face, track in zip(frame.faces, frame_ids, strict=True)))
            for frame, frame_ids in zip(frames, ids, strict=True)]


def find_tracks(frames: Sequence[FrameScore], min_track_frames: int = 2) -> list[Track]:
    """The tracks the faces' ``track_id`` form, by id, each scored by :func:`track_score`."""
    members: dict[int, list[tuple[FrameScore, FaceScore]]] = defaultdict(list)
    for frame in frames:
        for face in frame.faces:
            if face.track_id is not None:
                members[face.track_id].append((frame, face))
    return [Track(track, tuple(frame.index for frame, _ in seen),
                  track_score([face.fake_probability for _, face in seen], min_track_frames), seen[0][0].time_s,
                  seen[-1][0].time_s)
            for track, seen in sorted(members.items())]


@dataclass(frozen=True)
class MediaInfo:
    """What was sent, as the decoder recognised it; ``total_frames`` and ``fps`` for videos only."""

    type: MediaKind
    format: str
    width: int
    height: int
    total_frames: int | None = None
    fps: float | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type, "format": self.format, "width": self.width,
                                "height": self.height}
        if self.type == "video":
            data |= {"total_frames": self.total_frames, "fps": self.fps}
        return data


@dataclass(frozen=True)
class ModelInfo:
    """Which model answered: name and version as served, the backbone, whether the weights are trained, and
    where and in which precision the network ran (``device/precision``: ``cpu/fp32``, ``cuda/fp16``, ...),
    which says how closely the answer can match one computed elsewhere (the golden tolerances)."""

    name: str
    version: str
    backbone: str
    trained: bool
    compute: str = DEFAULT_COMPUTE

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "backbone": self.backbone, "trained": self.trained,
                "compute": self.compute}


@dataclass(frozen=True)
class Verdict:
    """The answer for one image or video.

    ``frames`` holds one frame for an image (its faces are the answer's ``faces``) and the sampled frames for
    a video; ``sampling``, ``aggregation``, ``min_track_frames`` and ``coverage`` are set for videos only, and
    a video's tracks and segments follow from its frames (:attr:`tracks`, :attr:`segments`).
    """

    fake_probability: float
    threshold: float
    media: MediaInfo
    model: ModelInfo
    frames: tuple[FrameScore, ...]
    sampling: Sampling | None = None
    aggregation: str | None = None
    min_track_frames: int | None = None
    coverage: Coverage | None = None

    @classmethod
    def of_image(cls, frame: FrameScore, threshold: float, media: MediaInfo, model: ModelInfo) -> Verdict:
        return cls(frame.fake_probability, threshold, media, model, (frame,))

    @classmethod
    def of_video(
        cls, frames: Sequence[FrameScore], threshold: float, media: MediaInfo, model: ModelInfo,
        sampling: Sampling, aggregation: str, min_track_frames: int, coverage: Coverage,
    ) -> Verdict:
        probability = video_probability(frames, aggregation, min_track_frames)
        return cls(probability, threshold, media, model, tuple(frames), sampling, aggregation, min_track_frames,
                   coverage)

    @property
    def tracks(self) -> list[Track]:
        return find_tracks(self.frames, self.min_track_frames or 1)

    @property
    def segments(self) -> list[Segment]:
        duration = self.coverage.duration_s if self.coverage is not None else 0.0
        return find_segments(self.frames, self.threshold, duration)

    @property
    def label(self) -> Label:
        return label_for(self.fake_probability, self.threshold)

    @property
    def is_fake(self) -> bool:
        return self.label == "FAKE"

    @property
    def confidence(self) -> float:
        return confidence_of(self.fake_probability, self.label)

    @property
    def face_detected(self) -> bool:
        """False: no face anywhere, only centre crops were scored."""
        return any(frame.face_detected for frame in self.frames)

    @property
    def faces(self) -> tuple[FaceScore, ...]:
        """Every scored face, in frame order, most confident detection first within a frame."""
        return tuple(face for frame in self.frames for face in frame.faces)

    @property
    def sampled_frame_indices(self) -> list[int]:
        return [frame.index for frame in self.frames]

    def to_json(self) -> dict[str, Any]:
        """The response body; its keys and their order are the API (README, Response)."""
        data: dict[str, Any] = {
            "label": self.label,
            "confidence": self.confidence,
            "fake_probability": self.fake_probability,
            "threshold": self.threshold,
            "face_detected": self.face_detected,
            "media": self.media.to_json(),
            "model": self.model.to_json(),
        }
        if self.media.type == "image":
            frame = self.frames[0]
            data |= {"face_search": frame.face_search, "faces_left_out": frame.faces_left_out,
                     "faces": [face.to_json() for face in frame.faces]}
        else:
            assert self.sampling is not None and self.coverage is not None
            data |= {"sampling": self.sampling.to_json(), "aggregation": self.aggregation,
                     "min_track_frames": self.min_track_frames, "coverage": self.coverage.to_json(self.frames),
                     "sampled_frame_indices": self.sampled_frame_indices,
                     "segments": [segment.to_json() for segment in self.segments],
                     "tracks": [track.to_json() for track in self.tracks],
                     "frames": [frame.to_json() for frame in self.frames]}
        return data

    @classmethod
    def from_json(cls, data: Any, kind: MediaKind | None = None) -> Verdict:
        """Parse and validate an answer; raises :class:`VerdictError` listing every problem.

        Besides types and ranges it checks what the rules imply: the label and confidence follow from the
        fake probability and threshold, a frame's score is its most-fake face, ``face_detected`` says whether
        a face was scored, a video's frames are its ``sampled_frame_indices`` and its score, tracks and
        segments follow from its frames. ``kind`` also requires the media type.
        """
        problems: list[str] = []
        verdict = _parse_verdict(data, kind, problems)
        if problems or verdict is None:
            raise VerdictError(problems or ["not a verdict"])
        return verdict


def verdict_problems(data: Any, kind: MediaKind | None = None) -> list[str]:
    """What is wrong with an answer that claims to be a verdict (empty: nothing)."""
    try:
        Verdict.from_json(data, kind)
    except VerdictError as error:
        return error.problems
    return []


# ---------------------------------------------------------------------------------------------- parsing


def _parse_verdict(data: Any, kind: MediaKind | None, problems: list[str]) -> Verdict | None:
    if not isinstance(data, Mapping):
        problems.append(f"the answer is a {type(data).__name__}, not a JSON object")
        return None
    for key, check in (("label", lambda v: v in ("REAL", "FAKE")), ("confidence", _is_probability),
                       ("fake_probability", _is_probability), ("threshold", _is_probability),
                       ("face_detected", lambda v: isinstance(v, bool)),
                       ("media", lambda v: isinstance(v, Mapping)), ("model", lambda v: isinstance(v, Mapping))):
        if not check(data.get(key)):
            problems.append(f"{key!r} is missing or invalid ({data.get(key)!r})")
    if problems:
        return None
    media = _parse_media(data["media"], kind, problems)
    model = _parse_model(data["model"], problems)
    threshold, probability = float(data["threshold"]), float(data["fake_probability"])
    if media is None or model is None:
        return None
    if media.type == "image":
        faces = _parse_faces(data.get("faces"), "faces", problems)
        if faces is None:
            return None
        if faces and abs(probability - frame_probability([face.fake_probability for face in faces])) > 1e-9:
            problems.append("fake_probability is not the most-fake face's")
        if any(face.track_id is not None for face in faces):
            problems.append("an image's faces carry a track_id")
        search, left_out = _parse_search(data, "", faces, problems)
        verdict = Verdict.of_image(FrameScore(0, probability, faces, search, left_out), threshold, media, model)
    else:
        verdict = _parse_video(data, probability, threshold, media, model, problems)
    if verdict is None:
        return None
    if data["label"] != verdict.label:
        problems.append(f"label {data['label']} contradicts fake_probability {probability} "
                        f"(threshold {threshold})")
    if abs(float(data["confidence"]) - verdict.confidence) > 1e-6:
        problems.append(f"confidence {data['confidence']} is not the probability of {data['label']}")
    if data["face_detected"] != verdict.face_detected:
        problems.append(f"face_detected {data['face_detected']} but {len(verdict.faces)} face(s) scored")
    return verdict


def _parse_media(data: Mapping[str, Any], kind: MediaKind | None, problems: list[str]) -> MediaInfo | None:
    media_type = data.get("type")
    if media_type not in ("image", "video"):
        problems.append(f"media.type {media_type!r} is neither image nor video")
        return None
    if kind is not None and media_type != kind:
        problems.append(f"media.type is {media_type!r}, expected {kind!r}")
    if not isinstance(data.get("format"), str):
        problems.append(f"media.format is missing or not a string ({data.get('format')!r})")
    for key in ("width", "height"):
        if not _is_int(data.get(key), 1):
            problems.append(f"media.{key} is missing or not a positive whole number ({data.get(key)!r})")
    if data.get("total_frames") is not None and not _is_int(data.get("total_frames")):
        problems.append(f"media.total_frames is not a whole number ({data.get('total_frames')!r})")
    if data.get("fps") is not None and not (_is_number(data.get("fps")) and data["fps"] > 0):
        problems.append(f"media.fps is not a positive number ({data.get('fps')!r})")
    if problems:
        return None
    return MediaInfo(media_type, data["format"], data["width"], data["height"], data.get("total_frames"),
                     data.get("fps"))


def _parse_model(data: Mapping[str, Any], problems: list[str]) -> ModelInfo | None:
    types = {"name": str, "version": str, "backbone": str, "trained": bool}
    wrong = [key for key, expected in types.items() if not isinstance(data.get(key), expected)]
    # Answers recorded before the field existed were computed on a CPU in fp32.
    compute = data.get("compute", DEFAULT_COMPUTE)
    if not (isinstance(compute, str) and compute.count("/") == 1):
        wrong.append("compute")
    for key in wrong:
        problems.append(f"model.{key} is missing or has the wrong type")
    return None if wrong else ModelInfo(data["name"], data["version"], data["backbone"], data["trained"], compute)


def _parse_faces(data: Any, where: str, problems: list[str]) -> tuple[FaceScore, ...] | None:
    if not isinstance(data, list):
        problems.append(f"{where} is not a list")
        return None
    faces = [FaceScore.from_json(face, f"{where}[{number}]", problems) for number, face in enumerate(data)]
    return None if any(face is None for face in faces) else tuple(faces)  # type: ignore[arg-type]


def _parse_search(data: Mapping[str, Any], where: str, faces: tuple[FaceScore, ...], problems: list[str]
                  ) -> tuple[FaceSearch, int]:
    search, left_out = data.get("face_search"), data.get("faces_left_out")
    if search not in FACE_SEARCHES or (search == "none") != (not faces):
        problems.append(f"{where}face_search {search!r} with {len(faces)} face(s)")
    if not _is_int(left_out):
        problems.append(f"{where}faces_left_out is not a whole number ({left_out!r})")
    return search if search in FACE_SEARCHES else "none", left_out if _is_int(left_out) else 0  # type: ignore


def _parse_video(
    data: Mapping[str, Any], probability: float, threshold: float, media: MediaInfo, model: ModelInfo,
    problems: list[str],
) -> Verdict | None:
    aggregation, frames_data = data.get("aggregation"), data.get("frames")
    min_track_frames = data.get("min_track_frames")
    sampling = None
    try:
        sampling = Sampling.from_json(data.get("sampling"))
    except ValueError as error:
        problems.append(f"'sampling' is invalid: {error}")
    if aggregation not in AGGREGATIONS:
        problems.append(f"'aggregation' {aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
    if not _is_int(min_track_frames, 1):
        problems.append(f"'min_track_frames' is missing or not a whole number >= 1 ({min_track_frames!r})")
    coverage_data = data.get("coverage")
    coverage = _parse_coverage(coverage_data, problems)
    if not isinstance(frames_data, list):
        problems.append(f"'frames' is missing or not a list ({type(frames_data).__name__})")
        return None
    if not frames_data:
        problems.append("a video answer has no frames")
        return None
    frames = []
    for position, frame in enumerate(frames_data):
        where = f"frames[{position}]"
        if not (isinstance(frame, Mapping) and _is_int(frame.get("index"))
                and _is_probability(frame.get("fake_probability")) and _is_number(frame.get("time_s"))):
            problems.append(f"{where} has no index, time_s or fake_probability")
            continue
        faces = _parse_faces(frame.get("faces"), f"{where}.faces", problems)
        if faces is None:
            continue
        if faces and abs(frame["fake_probability"] - frame_probability([f.fake_probability for f in faces])) > 1e-9:
            problems.append(f"{where}.fake_probability is not its most-fake face's")
        if frame.get("face_detected") is not bool(faces):
            problems.append(f"{where}.face_detected {frame.get('face_detected')!r} with {len(faces)} face(s)")
        if any(face.track_id is None for face in faces):
            problems.append(f"{where}: a face without a track_id")
        search, left_out = _parse_search(frame, f"{where}.", faces, problems)
        frames.append(FrameScore(frame["index"], float(frame["fake_probability"]), faces, search, left_out,
                                 float(frame["time_s"])))
    if problems or coverage is None:
        return None
    if data.get("sampled_frame_indices") != [frame.index for frame in frames]:
        problems.append("frames' indices differ from sampled_frame_indices")
        return None
    _check_timeline(frames, coverage, problems)
    if coverage_data != coverage.to_json(frames):
        problems.append("coverage does not describe the frames (frames_sampled, start_s, end_s)")
    verdict = Verdict(probability, threshold, media, model, tuple(frames), sampling, aggregation, min_track_frames,
                      coverage)
    expected = video_probability(frames, aggregation, min_track_frames)
    if abs(probability - expected) > 1e-9:
        problems.append(f"fake_probability {probability} is not the {aggregation} score of the frames ({expected})")
    for key, derived in (("tracks", verdict.tracks), ("segments", verdict.segments)):
        if data.get(key) != [item.to_json() for item in derived]:
            problems.append(f"'{key}' do not follow from the frames")
    return verdict


def _check_timeline(frames: list[FrameScore], coverage: Coverage, problems: list[str]) -> None:
    """Frames in time order within the video, and one face per track in a frame."""
    indices, times = [frame.index for frame in frames], [frame.time_s or 0.0 for frame in frames]
    if indices != sorted(set(indices)) or times != sorted(times):
        problems.append("frames are not in increasing index and time order")
    if indices[-1] >= coverage.frames_total or times[-1] > coverage.duration_s + 1e-6:
        problems.append("a frame lies beyond the video's frames_total or duration_s")
    for frame in frames:
        tracks = [face.track_id for face in frame.faces]
        if len(tracks) != len(set(tracks)):
            problems.append(f"frame {frame.index} has two faces in one track")


def _parse_coverage(data: Any, problems: list[str]) -> Coverage | None:
    numbers = ("start_s", "end_s", "duration_s")
    counts = ("frames_total", "frames_sampled", "samples_moved", "samples_left_out")
    if not (isinstance(data, Mapping) and all(_is_number(data.get(k)) and data[k] >= 0 for k in numbers)
            and all(_is_int(data.get(k)) for k in counts)):
        problems.append(f"'coverage' is missing or malformed ({data!r})")
        return None
    return Coverage(float(data["duration_s"]), data["frames_total"], data["samples_moved"], data["samples_left_out"])


def _is_number(value: Any) -> bool:
    """A finite JSON number (not a boolean, not NaN or infinity, not an integer beyond a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_probability(value: Any) -> bool:
    return _is_number(value) and 0.0 <= value <= 1.0
