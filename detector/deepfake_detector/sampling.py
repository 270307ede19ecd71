"""Which frames of a video are scored, and the cheapest way to decode them.

Policies (``PipelineSettings.sampling``, overridable per request, see :func:`parse_sampling`):

* ``uniform:N``: N frames spread evenly from the first frame to the last (N = 32 by default, as SBI, the DFDC
  winner and DeepfakeBench sample), so a verdict covers the whole length of any video;
* ``every_seconds:S``: one frame every S seconds from the first, for a timeline at a known pace;
* ``every_nth:K``: frames 0, K, 2K, ...: short clips, and training's frame extraction;
* ``at_frames:P,Q,...``: exactly the frames at those positions (0 is the first), decoded exactly, never moved:
  the job service (``deepfake_jobs``) plans a long video's samples once and sends each piece of it with the
  positions to score.

At most ``max_frames`` samples: more are thinned evenly over the video, never cut at its end.

The plan (:func:`plan_samples`) works on the video's frame index: every frame's presentation time and the
keyframe it depends on, read from the container's packets without decoding a pixel (``media``). A sample is
decoded exactly when the whole plan decodes at most ``max_decode_per_sample`` frames per sample on average
(each reached from where the decoder already is, or from the keyframe before it, whichever is cheaper).
Otherwise a sample that costs more than that moves to the nearest frame that is that cheap (a keyframe,
or a frame just after one), unless that frame lies more than half-way to the previous sample (where it
landed) or to the next one (then it is decoded exactly). So a short clip is read in one pass, a 10-minute
video costs about one keyframe per sample, and the answer gives each time actually scored.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .errors import InputError

Policy = Literal["uniform", "every_seconds", "every_nth", "at_frames"]
POLICIES: tuple[str, ...] = get_args(Policy)
SAMPLING_HEADER = "X-Deepfake-Sampling"
SAMPLING_FIELD = "sampling"
_VALUE_NAMES = {"uniform": "frames", "every_seconds": "seconds", "every_nth": "stride", "at_frames": "positions"}
DEFAULT_VALUES = {"uniform": 32, "every_seconds": 1.0, "every_nth": 10}
"""The value a policy named without one takes (``uniform`` alone is ``uniform:32``); ``at_frames`` has none."""
MAX_POSITIONS = 1024
"""The most positions one ``at_frames`` request may list (a header stays a few kilobytes)."""


@dataclass(frozen=True)
class Sampling:
    """A policy and its value: the number of frames (uniform), seconds between frames, the stride, or for
    ``at_frames`` the frame positions (``positions``; ``value`` is their count)."""

    policy: Policy
    value: float
    positions: tuple[int, ...] = ()

    @classmethod
    def at_frames(cls, positions: Sequence[int]) -> Sampling:
        """Exactly these frames (sorted, each once)."""
        unique = tuple(sorted(set(positions)))
        return check_sampling(cls("at_frames", len(unique), unique))

    def __str__(self) -> str:
        if self.policy == "at_frames":
            return "at_frames:" + ",".join(map(str, self.positions))
        return f"{self.policy}:{self.value:g}"

    def to_json(self) -> dict[str, Any]:
        if self.policy == "at_frames":
            return {"policy": self.policy, "positions": list(self.positions)}
        value = float(self.value) if self.policy == "every_seconds" else int(self.value)
        return {"policy": self.policy, _VALUE_NAMES[self.policy]: value}

    @classmethod
    def from_json(cls, data: Any) -> Sampling:
        """The form :meth:`to_json` writes; raises ValueError for anything else."""
        if not isinstance(data, dict) or data.get("policy") not in POLICIES:
            raise ValueError(f"sampling {data!r} names no policy of {', '.join(POLICIES)}")
        if data["policy"] == "at_frames":
            positions = data.get("positions")
            if not isinstance(positions, list) or not all(_is_position(p) for p in positions):
                raise ValueError(f"at_frames needs a list of frame positions, got {positions!r}")
            return cls.at_frames(positions)
        return check_sampling(cls(data["policy"], data.get(_VALUE_NAMES[data["policy"]])))


def _is_position(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_sampling(sampling: Sampling) -> Sampling:
    """``sampling`` if its value suits its policy; ValueError if not. (A policy that asks for more frames than
    ``max_frames`` is not wrong: its samples are thinned, and the coverage says how many were scored.)"""
    if sampling.policy == "at_frames":
        if not sampling.positions or not all(_is_position(p) for p in sampling.positions):
            raise ValueError("at_frames needs one or more frame positions (whole numbers from 0)")
        if len(sampling.positions) > MAX_POSITIONS:
            raise ValueError(f"at_frames lists {len(sampling.positions)} positions; at most {MAX_POSITIONS}")
        return sampling
    value = sampling.value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{sampling.policy} needs a positive {_VALUE_NAMES[sampling.policy]}, got {value!r}")
    if sampling.policy != "every_seconds" and value != int(value):
        raise ValueError(f"{sampling.policy} needs a whole number of {_VALUE_NAMES[sampling.policy]}, got {value}")
    return sampling


def parse_sampling(text: str) -> Sampling:
    """``policy`` or ``policy:value`` (``uniform:32``, ``every_seconds:2``, ``every_nth:10``,
    ``at_frames:0,250,500``) from a request; a value that cannot be used is the request's 400 ``bad_sampling``."""
    policy, _, raw = text.strip().partition(":")
    policy = policy.strip()
    if policy not in POLICIES:
        raise InputError("bad_sampling", f"unknown sampling policy {policy!r}; use one of {', '.join(POLICIES)}, "
                         "e.g. uniform:32, every_seconds:2 or every_nth:10", 400)
    try:
        if policy == "at_frames":
            items = [item.strip() for item in raw.split(",")]
            if not all(item.isdigit() for item in items):
                raise ValueError("at_frames needs frame positions as whole numbers from 0, e.g. at_frames:0,250,500")
            return Sampling.at_frames([int(item) for item in items])
        value = float(raw) if raw.strip() else float(DEFAULT_VALUES[policy])
        return check_sampling(Sampling(policy, value))  # type: ignore[arg-type]
    except ValueError as error:
        raise InputError("bad_sampling", f"sampling {text.strip()!r}: {error}", 400) from error


@dataclass(frozen=True)
class FrameIndex:
    """A video's frames in presentation order: each one's time in seconds from the first frame, and the
    position of the keyframe decoding must start from to reach it."""

    times: tuple[float, ...]
    keyframe_of: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.times)

    @property
    def duration_s(self) -> float:
        """From the first frame to the last one (a one-frame video lasts 0 s)."""
        return self.times[-1] if self.times else 0.0

    @functools.cached_property
    def keyframes(self) -> list[int]:
        return sorted(set(self.keyframe_of))


def target_positions(sampling: Sampling, index: FrameIndex, max_frames: int) -> list[tuple[int, float]]:
    """(frame position, wanted time) of each sample before any keyframe snapping, in time order."""
    count = len(index)
    if count == 0:
        return []
    if sampling.policy == "at_frames":
        beyond = [position for position in sampling.positions if position >= count]
        if beyond:
            raise InputError("bad_sampling", f"at_frames asks for frame {beyond[0]}, beyond the video's {count} "
                             "frames", 422)
        if len(sampling.positions) > max_frames:
            raise InputError("bad_sampling", f"at_frames lists {len(sampling.positions)} positions; this version "
                             f"scores at most {max_frames} frames per request", 400)
        return [(position, index.times[position]) for position in sampling.positions]
    if sampling.policy == "every_nth":
        wanted = [(position, index.times[position]) for position in range(0, count, int(sampling.value))]
    else:
        if sampling.policy == "uniform":
            samples = min(int(sampling.value), count)
            step = index.duration_s / (samples - 1) if samples > 1 else 0.0
            times = [step * number for number in range(samples)]
        elif index.duration_s / sampling.value + 1 > count:  # finer than the frames: every frame
            times = list(index.times)
        else:
            periods = int(index.duration_s / sampling.value + 1e-9)  # 0.3 s / 0.1 s is 3 periods, not 2.9999
            times = [sampling.value * number for number in range(periods + 1)]
        wanted = []
        for time_s in times:
            position = _nearest(index.times, time_s)
            if not wanted or position > wanted[-1][0]:
                wanted.append((position, time_s))
    if len(wanted) > max_frames:
        step = (len(wanted) - 1) / (max_frames - 1) if max_frames > 1 else 0.0
        wanted = [wanted[round(step * number)] for number in range(max_frames)]
    return wanted


def plan_samples(wanted: list[tuple[int, float]], index: FrameIndex, max_decode_per_sample: int
                 ) -> list[tuple[int, float, bool]]:
    """(position, wanted time, seek first) for each sample: every sample exact when the whole plan decodes at
    most ``max_decode_per_sample`` frames per sample on average, else each sample dearer than that snapped."""
    exact = _exact_plan(wanted, index)
    if sum(cost for *_, cost in exact) <= max_decode_per_sample * len(wanted):
        return [(position, target_s, seek) for position, target_s, seek, _ in exact]
    planned: list[tuple[int, float, bool]] = []
    decoded_up_to = -1  # last position the decoder has produced
    for number, (position, target_s) in enumerate(wanted):
        chosen, seek, cost = _cheapest_way(index, position, decoded_up_to)
        if cost > max_decode_per_sample:
            keyframe = index.keyframe_of[position]
            candidates = [(min(position, keyframe + max_decode_per_sample - 1), True)]
            following = _next_keyframe(index, position)
            if following is not None:
                candidates.append((following, True))
            if not seek:
                candidates.append((decoded_up_to + max_decode_per_sample, False))
            near, near_seek = min(candidates, key=lambda c: abs(index.times[c[0]] - target_s))
            previous_s = index.times[decoded_up_to] if decoded_up_to >= 0 else -math.inf  # where it landed
            next_s = wanted[number + 1][1] if number + 1 < len(wanted) else math.inf
            allowed = min(target_s - previous_s, next_s - target_s) / 2
            if abs(index.times[near] - target_s) <= allowed and near > decoded_up_to:
                chosen, seek = near, near_seek
        if chosen <= decoded_up_to:
            continue
        planned.append((chosen, target_s, seek))
        decoded_up_to = chosen
    return planned


def plan_for(sampling: Sampling, index: FrameIndex, max_frames: int, max_decode_per_sample: int, seekable: bool
             ) -> tuple[list[tuple[int, float]], list[tuple[int, float, bool]]]:
    """The wanted samples and the plan that decodes them, as a request with ``sampling`` gets them: exact for
    ``at_frames`` (the caller planned those) and for a video that cannot seek, else within the decoding budget."""
    wanted = target_positions(sampling, index, max_frames)
    exact = not seekable or sampling.policy == "at_frames"
    return wanted, plan_samples(wanted, index, len(index) if exact else max_decode_per_sample)


def _exact_plan(wanted: list[tuple[int, float]], index: FrameIndex) -> list[tuple[int, float, bool, int]]:
    plan, decoded_up_to = [], -1
    for position, target_s in wanted:
        _, seek, cost = _cheapest_way(index, position, decoded_up_to)
        plan.append((position, target_s, seek, cost))
        decoded_up_to = position
    return plan


def _cheapest_way(index: FrameIndex, position: int, decoded_up_to: int) -> tuple[int, bool, int]:
    """(position, seek first, frames decoded) to reach ``position`` exactly: decoding on from where the decoder
    is, or seeking to the keyframe before it, whichever decodes fewer frames."""
    keyframe = index.keyframe_of[position]
    from_keyframe = position - keyframe + 1
    if decoded_up_to < position and keyframe <= decoded_up_to:
        return position, False, position - decoded_up_to
    if decoded_up_to < position and position - decoded_up_to <= from_keyframe:
        return position, False, position - decoded_up_to
    return position, True, from_keyframe


def nearest_frame(index: FrameIndex, time_s: float) -> int:
    """The position of the frame shown nearest to ``time_s``."""
    return _nearest(index.times, time_s)


def _nearest(times: tuple[float, ...], time_s: float) -> int:
    after = bisect.bisect_left(times, time_s)
    if after == 0:
        return 0
    if after == len(times):
        return len(times) - 1
    return after if times[after] - time_s < time_s - times[after - 1] else after - 1


def _next_keyframe(index: FrameIndex, position: int) -> int | None:
    keyframes = index.keyframes
    after = bisect.bisect_right(keyframes, position)
    return keyframes[after] if after < len(keyframes) else None
