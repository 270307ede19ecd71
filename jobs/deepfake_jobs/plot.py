"""A video verdict's timeline as a PNG: where in the video it is fake, and who in it.

One line with markers per face track (a person, ``tracks``; broken where a sampled frame lacks them), grey
markers for the frames scored as their centre crop (no face in them), the threshold dashed, and every segment (a
stretch at or above the threshold) shaded. :func:`draw_timeline` returns the figure, so a test counts what was
drawn instead of matching pixels (each artist carries a ``gid``: ``track``, ``centre_crop``, ``threshold``,
``segment``); :func:`plot_timeline` writes it. The figure is drawn on matplotlib's Agg canvas, never through
pyplot: no display, no global state, safe in a worker or over SSH. matplotlib comes with the development set
(``requirements.txt``), not the job service's.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deepfake_detector.verdict import Verdict
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SIZE_IN = (10.0, 4.0)
DPI = 120
"""10 x 4 in at 120 dpi: a 1200 x 480 PNG, readable on a screen and in a report."""
LEGEND_TRACKS = 8
"""Tracks named in the legend (the most fake first); a crowd's other tracks are drawn but not named."""
TRACK_GID, CENTRE_GID, THRESHOLD_GID, SEGMENT_GID = "track", "centre_crop", "threshold", "segment"


def draw_timeline(verdict: Mapping[str, Any] | Verdict, title: str | None = None) -> Figure:
    """The timeline figure of a video verdict (JSON as answered, or a :class:`Verdict`); ValueError for an
    image's verdict or an answer that is not a valid verdict (``VerdictError``)."""
    parsed = verdict if isinstance(verdict, Verdict) else Verdict.from_json(verdict)
    if parsed.media.type != "video" or parsed.coverage is None:
        raise ValueError(f"a timeline needs a video verdict; this one is an {parsed.media.type}'s")
    figure = Figure(figsize=SIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()

    for number, segment in enumerate(parsed.segments):
        axes.axvspan(segment.start_s, segment.end_s, color="tab:red", alpha=0.15, linewidth=0, gid=SEGMENT_GID,
                     label="segment (>= threshold)" if number == 0 else "_segment")
    axes.axhline(parsed.threshold, color="black", linestyle="--", linewidth=1.0, gid=THRESHOLD_GID,
                 label=f"threshold {parsed.threshold:.2f}")

    points: dict[int, list[tuple[float, float]]] = defaultdict(list)
    last_seen: dict[int, int] = {}
    centre: list[tuple[float, float]] = []
    for position, frame in enumerate(parsed.frames):
        time_s = frame.time_s or 0.0
        if not frame.faces:
            centre.append((time_s, frame.fake_probability))
        for face in frame.faces:
            if face.track_id is None:
                continue
            if face.track_id in last_seen and last_seen[face.track_id] != position - 1:
                points[face.track_id].append((math.nan, math.nan))  # absent from samples between: a gap, no line
            points[face.track_id].append((time_s, face.fake_probability))
            last_seen[face.track_id] = position
    scores = {track.id: track.fake_probability for track in parsed.tracks}
    named = set(sorted(points, key=lambda track: -scores.get(track, 0.0))[:LEGEND_TRACKS])
    for track, seen in sorted(points.items()):
        label = f"person {track} ({scores.get(track, 0.0):.2f})"
        axes.plot([t for t, _ in seen], [p for _, p in seen], marker="o", markersize=3, linewidth=1.2,
                  clip_on=False, gid=TRACK_GID, label=label if track in named else f"_{label}")
    if centre:
        axes.scatter([t for t, _ in centre], [p for _, p in centre], color="grey", marker="s", s=12, zorder=3,
                     clip_on=False, gid=CENTRE_GID, label="no face (centre crop)")

    end_s = max(parsed.coverage.duration_s, parsed.frames[-1].time_s or 0.0)
    axes.set_xlim(0.0, end_s if end_s > 0 else 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("time (s)")
    axes.set_ylabel("fake probability")
    axes.grid(True, alpha=0.3)
    heading = title or (f"{parsed.media.format} video, {parsed.coverage.duration_s:.1f} s, "
                        f"{parsed.model.name} {parsed.model.version}")
    untrained = "" if parsed.model.trained else " (untrained model)"
    axes.set_title(f"{heading}: {parsed.label} {parsed.fake_probability:.2f}{untrained}")
    figure.legend(loc="outside right upper", fontsize="small")
    return figure


def plot_timeline(verdict: Mapping[str, Any] | Verdict, path: Path, title: str | None = None) -> Path:
    """Write a video verdict's timeline to ``path`` as a PNG (:func:`draw_timeline`) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_timeline(verdict, title).savefig(path, format="png", dpi=DPI)
    return path
