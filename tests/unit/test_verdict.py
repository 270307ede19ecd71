"""The verdict: its JSON form (the API), the scoring rules, and validation that names what is wrong."""

from __future__ import annotations

import json

import pytest
from deepfake_detector.sampling import Sampling
from deepfake_detector.tracks import link_tracks
from deepfake_detector.verdict import (
    Coverage,
    FaceScore,
    FrameScore,
    MediaInfo,
    ModelInfo,
    Verdict,
    VerdictError,
    aggregate,
    find_segments,
    frame_probability,
    label_for,
    verdict_problems,
    video_probability,
)

MODEL = ModelInfo("deepfake_detector", "1.0", "efficientnet_b4", False)


def video(probabilities: list[float], aggregation: str = "mean") -> Verdict:
    frames = [FrameScore.scored(10 * n, [FaceScore.reported((1, 2, 50, 60), 0.999912, p, 0)], time_s=n / 3)
              for n, p in enumerate(probabilities)]
    media = MediaInfo("video", "mp4", 176, 144, total_frames=120, fps=29.97)
    coverage = Coverage(3.971, 120)
    return Verdict.of_video(frames, 0.5, media, MODEL, Sampling("every_nth", 10), aggregation, 2, coverage)


def people(*tracks: list[float]) -> list[FrameScore]:
    """Frames one second apart in which person ``k`` scores ``tracks[k][n]`` in frame ``n`` (None: not seen)."""
    frames = []
    for n in range(max(len(track) for track in tracks)):
        faces = [FaceScore.reported((100 * k, 0, 100 * k + 50, 60), 0.99, track[n], k)
                 for k, track in enumerate(tracks) if n < len(track) and track[n] is not None]
        frames.append(FrameScore.scored(n, faces, 0.5 if not faces else None, time_s=float(n)))
    return frames


def test_the_rules_are_stated_once() -> None:
    assert frame_probability([0.2, 0.9, 0.4]) == 0.9
    assert label_for(0.5, 0.5) == "FAKE" and label_for(0.4999, 0.5) == "REAL"
    assert aggregate([0.1, 0.2, 0.9], "mean") == pytest.approx(0.4)
    assert aggregate([0.1, 0.2, 0.9], "median") == 0.2 and aggregate([0.1, 0.2, 0.9], "max") == 0.9
    with pytest.raises(ValueError, match="aggregation"):
        aggregate([0.1], "mode")
    with pytest.raises(ValueError, match="at least one"):
        frame_probability([])


def test_an_image_verdict_serialises_as_the_readme_documents() -> None:
    faces = [FaceScore.reported((170.31, 109.84, 354.04, 327.77), 0.99997, 0.83),
             FaceScore.reported((10.0, 10.0, 40.0, 40.0), 0.95, 0.2)]
    verdict = Verdict.of_image(FrameScore.scored(0, faces), 0.5, MediaInfo("image", "jpeg", 512, 600), MODEL)
    assert verdict.to_json() == {
        "label": "FAKE", "confidence": 0.83, "fake_probability": 0.83, "threshold": 0.5, "face_detected": True,
        "media": {"type": "image", "format": "jpeg", "width": 512, "height": 600},
        "model": {"name": "deepfake_detector", "version": "1.0", "backbone": "efficientnet_b4", "trained": False,
                  "compute": "cpu/fp32"},
        "face_search": "first", "faces_left_out": 0,
        "faces": [{"box": [170.3, 109.8, 354.0, 327.8], "detection_probability": 1.0, "fake_probability": 0.83},
                  {"box": [10.0, 10.0, 40.0, 40.0], "detection_probability": 0.95, "fake_probability": 0.2}],
    }
    assert list(verdict.to_json()) == ["label", "confidence", "fake_probability", "threshold", "face_detected",
                                       "media", "model", "face_search", "faces_left_out", "faces"]


def test_a_face_free_image_scores_its_centre_crop() -> None:
    frame = FrameScore.scored(0, [], center_probability=0.31)
    verdict = Verdict.of_image(frame, 0.5, MediaInfo("image", "png", 300, 451), MODEL)
    assert (verdict.label, verdict.confidence, verdict.face_detected, verdict.faces) == ("REAL", 0.69, False, ())
    with pytest.raises(ValueError, match="neither faces nor a centre-crop"):
        FrameScore.scored(0, [])


def test_a_video_verdict_aggregates_its_frames_and_lists_them() -> None:
    verdict = video([0.2, 0.8, 0.5], "median")
    data = verdict.to_json()
    assert list(data) == ["label", "confidence", "fake_probability", "threshold", "face_detected", "media", "model",
                          "sampling", "aggregation", "min_track_frames", "coverage", "sampled_frame_indices",
                          "segments", "tracks", "frames"]
    assert (data["fake_probability"], data["label"], data["sampled_frame_indices"]) == (0.5, "FAKE", [0, 10, 20])
    assert data["sampling"] == {"policy": "every_nth", "stride": 10}
    assert data["media"] == {"type": "video", "format": "mp4", "width": 176, "height": 144, "total_frames": 120,
                             "fps": 29.97}
    assert data["coverage"] == {"start_s": 0.0, "end_s": 0.667, "duration_s": 3.971, "frames_total": 120,
                                "frames_sampled": 3, "samples_moved": 0, "samples_left_out": 0}
    assert data["frames"][1] == {"index": 10, "time_s": 0.333, "fake_probability": 0.8, "face_detected": True,
                                 "face_search": "first", "faces_left_out": 0, "faces": [
        {"box": [1.0, 2.0, 50.0, 60.0], "detection_probability": 0.9999, "fake_probability": 0.8, "track_id": 0}]}
    # Frames 10 and 20 are at or above 0.5: the stretch lies after the clean sample at 0 s, up to the video's end.
    assert data["segments"] == [{"start_s": 0.0, "end_s": 3.971, "peak_s": 0.333, "peak_probability": 0.8,
                                 "frames": 2}]
    assert data["tracks"] == [{"id": 0, "frames": [0, 10, 20], "start_s": 0.0, "end_s": 0.667,
                               "fake_probability": pytest.approx(0.5)}]


def test_a_video_is_as_fake_as_its_most_fake_person() -> None:
    """``tracks``: person 1 is fake throughout; person 0's one stray frame does not flip a real person; a
    stretch manipulated in a long video counts at its own level, where the mean would dilute it."""
    frames = people([0.1, 0.1, 0.95, 0.1, 0.1], [0.8, 0.9, 0.7, 0.85, 0.75])
    assert video_probability(frames, "tracks") == pytest.approx(0.8)  # the best pair of samples holds 0.8
    assert video_probability(people([0.1, 0.1, 0.95, 0.1, 0.1]), "tracks") == pytest.approx(0.1)
    stretch = people([0.1] * 20 + [0.9, 0.95, 0.9, 0.92] + [0.1] * 8)
    assert video_probability(stretch, "tracks") == pytest.approx(0.9)
    assert video_probability(stretch, "mean") < 0.25
    assert video_probability(stretch, "tracks", min_track_frames=5) == pytest.approx(0.1)
    assert video_probability(frames, "mean") == pytest.approx(sum(max(a, b) for a, b in zip(
        [0.1, 0.1, 0.95, 0.1, 0.1], [0.8, 0.9, 0.7, 0.85, 0.75])) / 5)
    # A face seen in one sampled frame only (a stray detection) does not decide while a longer track exists...
    assert video_probability(people([0.1, 0.2, 0.1], [None, 0.99]), "tracks") == pytest.approx(0.1)
    # ...unless it is the only one; and a video with no face at all scores as the mean of its centre crops.
    assert video_probability(people([None, 0.99]), "tracks") == pytest.approx(0.99)
    faceless = [FrameScore.scored(n, [], p, time_s=n) for n, p in enumerate([0.2, 0.4])]
    assert video_probability(faceless, "tracks") == pytest.approx(0.3)


def test_segments_bound_the_flagged_stretches_by_the_clean_samples_around_them() -> None:
    frames = people([0.1, 0.7, 0.9, 0.2, 0.3, 0.6])
    segments = find_segments(frames, 0.5, duration_s=5.5)
    assert [(s.start_s, s.end_s, s.peak_s, s.peak_probability, s.frames) for s in segments] == [
        (0.0, 3.0, 2.0, 0.9, 2), (4.0, 5.5, 5.0, 0.6, 1)]
    assert find_segments(people([0.1, 0.2]), 0.5, 1.0) == []


def test_tracks_follow_a_person_across_samples_and_new_people_get_new_ids() -> None:
    left, right = (100, 100, 200, 220), (600, 90, 690, 200)
    moved_left = (130, 110, 232, 230)  # overlaps its last box
    far_left = (260, 100, 360, 220)  # no overlap, and more than half a face from where the person was
    assert link_tracks([[left], [right, moved_left], [moved_left, right], [far_left]]) == [[0], [1, 0], [0, 1], [2]]
    assert link_tracks([[], [left], []]) == [[], [0], []]


def test_json_round_trips_to_the_same_verdict() -> None:
    for verdict in (video([0.2, 0.8, 0.5]), Verdict.of_image(FrameScore.scored(0, [], 0.7), 0.6,
                                                             MediaInfo("image", "gif", 64, 64), MODEL)):
        text = json.dumps(verdict.to_json())
        assert Verdict.from_json(json.loads(text)) == verdict
        assert json.dumps(Verdict.from_json(json.loads(text)).to_json()) == text


def test_an_answer_recorded_before_compute_existed_was_computed_on_a_cpu_in_fp32() -> None:
    data = video([0.2, 0.8, 0.5]).to_json()
    del data["model"]["compute"]
    assert Verdict.from_json(data).model.compute == "cpu/fp32"


def test_validation_names_each_broken_rule() -> None:
    good = video([0.2, 0.8, 0.5]).to_json()
    assert verdict_problems(good, "video") == []
    assert verdict_problems(good, "image") == ["media.type is 'video', expected 'image'"]

    def broken(**changes) -> list[str]:
        data = json.loads(json.dumps(good))
        for path, value in changes.items():
            target = data
            *parents, key = path.split("__")
            for parent in parents:
                target = target[int(parent)] if parent.isdigit() else target[parent]
            target[key] = value
        return verdict_problems(data)

    assert any("contradicts" in p for p in broken(label="REAL"))
    assert any("confidence" in p for p in broken(confidence=0.1))
    assert any("mean score of the frames" in p for p in broken(fake_probability=0.9, confidence=0.9))
    assert any("tracks" in p for p in broken(tracks=[]))
    assert any("segments" in p for p in broken(segments=[]))
    assert any("track_id" in p for p in broken(frames__0__faces__0__track_id="a"))
    assert any("face_search" in p for p in broken(frames__0__face_search="third_look"))
    assert any("sampling" in p for p in broken(sampling={"policy": "every_nth", "stride": 0}))
    assert any("coverage" in p for p in broken(coverage={"start_s": 0}))
    assert any("coverage does not describe" in p for p in broken(coverage__frames_sampled=4))
    assert any("increasing" in p for p in broken(frames__1__time_s=5.0, frames__2__time_s=1.0))
    assert any("beyond" in p for p in broken(coverage__frames_total=15))
    assert any("most-fake face" in p for p in broken(frames__0__fake_probability=0.25))
    assert any("sampled_frame_indices" in p for p in broken(sampled_frame_indices=[0, 10]))
    assert any("box" in p for p in broken(frames__1__faces__0__box=[50, 2, 1, 60]))
    assert any("aggregation" in p for p in broken(aggregation="mode"))
    assert any("model.trained" in p for p in broken(model__trained="no"))
    assert any("model.compute" in p for p in broken(model__compute="gpu"))
    with pytest.raises(VerdictError) as raised:
        Verdict.from_json({"error": "corrupt_media", "detail": "truncated"})
    assert len(raised.value.problems) >= 5
