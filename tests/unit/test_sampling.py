"""Sampling: the policies over a video's whole length, the frame cap that thins instead of cutting, and the
decoding plan that stays exact on short clips and moves samples to cheap frames on long-GOP videos.

The plans are checked on frame indexes built here (times and keyframes as a container would give them); the
real videos they come from are decoded in test_media, test_pipeline and test_timeline.
"""

from __future__ import annotations

import pytest
from deepfake_detector.errors import InputError
from deepfake_detector.sampling import FrameIndex, Sampling, parse_sampling, plan_samples, target_positions


def index_of(seconds: float, fps: float = 25.0, keyframe_every: int = 250) -> FrameIndex:
    frames = round(seconds * fps)
    return FrameIndex(tuple(n / fps for n in range(frames)),
                      tuple(n - n % keyframe_every for n in range(frames)))


def test_a_request_names_a_policy_and_a_value():
    assert parse_sampling("uniform:16") == Sampling("uniform", 16)
    assert parse_sampling(" every_seconds:2.5 ") == Sampling("every_seconds", 2.5)
    assert parse_sampling("uniform") == Sampling("uniform", 32)  # the policy's default value
    assert str(parse_sampling("every_nth:10")) == "every_nth:10"
    assert Sampling.from_json(Sampling("every_seconds", 2.0).to_json()) == Sampling("every_seconds", 2.0)


@pytest.mark.parametrize("text", ["every_frame", "uniform:0", "uniform:-3", "uniform:many", "every_nth:2.5",
                                  "every_seconds:nan", "every_seconds:inf", "", "every_nth:"])
def test_an_unusable_sampling_is_the_requests_400(text):
    if text == "every_nth:":
        assert parse_sampling(text) == Sampling("every_nth", 10)
        return
    with pytest.raises(InputError) as refused:
        parse_sampling(text)
    assert (refused.value.status, refused.value.code) == (400, "bad_sampling")


def test_at_frames_scores_exactly_the_positions_asked_for_never_moved_or_thinned():
    sampling = parse_sampling("at_frames:500,0,250,250")
    assert sampling == Sampling.at_frames([0, 250, 500]) and str(sampling) == "at_frames:0,250,500"
    assert Sampling.from_json(sampling.to_json()) == sampling
    index = index_of(30)  # a keyframe every 10 s: exact frames 4 s past one would move under another policy
    wanted = target_positions(parse_sampling("at_frames:100,350,600"), index, max_frames=64)
    assert wanted == [(100, 4.0), (350, 14.0), (600, 24.0)]
    for text, status in (("at_frames:", 400), ("at_frames:1,-2", 400), ("at_frames:1.5", 400), ("at_frames:x", 400)):
        with pytest.raises(InputError) as refused:
            parse_sampling(text)
        assert (refused.value.status, refused.value.code) == (status, "bad_sampling"), text
    with pytest.raises(InputError) as beyond:
        target_positions(parse_sampling("at_frames:0,750"), index, max_frames=64)
    assert beyond.value.status == 422
    with pytest.raises(InputError) as too_many:  # refused, not thinned: the caller planned these frames
        target_positions(Sampling.at_frames(range(10)), index, max_frames=6)
    assert too_many.value.status == 400 and "at most 6" in too_many.value.detail


def test_uniform_spans_the_first_frame_to_the_last():
    index = index_of(600)
    wanted = target_positions(Sampling("uniform", 32), index, max_frames=64)
    assert len(wanted) == 32 and wanted[0] == (0, 0.0) and wanted[-1][0] == len(index) - 1
    assert target_positions(Sampling("uniform", 32), index_of(0.2), 64) == [(n, n / 25) for n in range(5)]


def test_every_seconds_is_one_frame_per_period_and_never_finer_than_the_frames():
    wanted = target_positions(Sampling("every_seconds", 2.0), index_of(10), max_frames=64)
    assert [time_s for _, time_s in wanted] == [0.0, 2.0, 4.0, 6.0, 8.0]
    every_frame = target_positions(Sampling("every_seconds", 1e-9), index_of(1), max_frames=64)
    assert [position for position, _ in every_frame] == list(range(25))


def test_the_cap_thins_the_samples_evenly_to_the_end():
    index = index_of(60)
    wanted = target_positions(Sampling("every_seconds", 1.0), index, max_frames=7)
    assert len(wanted) == 7 and wanted[0][0] == 0 and wanted[-1][1] == 59.0
    assert [time_s for _, time_s in wanted] == [0.0, 10.0, 20.0, 30.0, 39.0, 49.0, 59.0]


def test_a_short_clip_is_decoded_exactly_in_one_pass():
    """10 s at 25 fps, one keyframe: 32 samples 8 frames apart are read on from the start, none seeks."""
    index = index_of(10)
    wanted = target_positions(Sampling("uniform", 32), index, 64)
    plan = plan_samples(wanted, index, max_decode_per_sample=24)
    assert [position for position, _, _ in plan] == [position for position, _ in wanted]
    assert not any(seek for _, _, seek in plan)


def test_a_long_gop_video_moves_samples_to_cheap_frames_near_them():
    """10 minutes with a keyframe every 10 s: exact frames would decode about 125 frames each, so each sample
    moves to a frame at most 24 decodes from a keyframe, never more than half-way to its neighbours."""
    index = index_of(600)
    wanted = target_positions(Sampling("uniform", 32), index, 64)
    plan = plan_samples(wanted, index, max_decode_per_sample=24)
    assert len(plan) == 32
    spacing = 600 / 31
    for (position, target_s, seek), (wanted_position, _) in zip(plan, wanted, strict=True):
        assert abs(index.times[position] - target_s) <= spacing / 2
        assert not seek or position - index.keyframe_of[position] < 24 or position == wanted_position
    moved = sum(position != wanted_position for (position, _, _), (wanted_position, _) in zip(plan, wanted))
    assert moved >= 28
    exact = plan_samples(wanted, index, max_decode_per_sample=10**6)
    assert [position for position, _, _ in exact] == [position for position, _ in wanted]
