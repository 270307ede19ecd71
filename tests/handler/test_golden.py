"""Golden requests on built archives: they are the archive's own answers, `make mar` records them, and the
comparison applies the stated tolerances (and refuses an answer that is not a valid verdict)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from deepfake_detector.archive import WEIGHTS_FILE, Archive
from deepfake_ops.golden import (
    COMPUTE_TOLERANCES,
    GOLDEN_FORMAT,
    GOLDEN_INPUTS,
    PROBABILITY_TOLERANCE,
    Tolerances,
    answer_compute,
    compare_response,
    sha256_bytes,
)

from tests.support import MODEL_NAME, image_verdict
from tests.support.archives import run_command


def test_golden_requests_are_the_archives_own_answers(rollout_store: Path, media: Any) -> None:
    v1, v2 = (Archive(rollout_store / f"{MODEL_NAME}-{v}.mar").golden() for v in ("1.0", "2.0"))
    assert v1 and v2
    for golden, version in ((v1, "1.0"), (v2, "2.0")):
        assert golden["model_version"] == version
        entries = {entry["name"]: entry for entry in golden["requests"]}
        assert list(entries) == [item.name for item in GOLDEN_INPUTS]
        assert entries["astronaut.png"]["sha256"] == sha256_bytes(media.astronaut.read_bytes())
        assert entries["carphone.mp4"]["sha256"] == sha256_bytes(media.face_video.read_bytes())
        astronaut = entries["astronaut.png"]["response"]
        assert entries["astronaut.png"]["status"] == 200 and astronaut["face_detected"]
        assert len(astronaut["faces"]) == 1 and astronaut["model"]["version"] == version
        assert entries["grace_hopper.jpg"]["response"]["face_detected"]
        assert entries["chelsea.png"]["response"]["face_detected"] is False
        assert entries["astronaut-truncated.png"]["status"] == 422
        assert entries["astronaut-truncated.png"]["response"]["error"] == "corrupt_media"
    # Each archive's answers follow its own settings (2.0: every_nth:20, max_frames 6, threshold 0.6).
    video = {v: next(e for e in g["requests"] if e["name"] == "carphone.mp4")["response"]
             for v, g in (("1.0", v1), ("2.0", v2))}
    assert len(video["1.0"]["sampled_frame_indices"]) == 32  # uniform:32
    assert video["2.0"]["sampled_frame_indices"] == list(range(0, 120, 20))
    assert video["2.0"]["threshold"] == 0.6


def test_make_mar_records_golden_requests(weights_file: Path, tmp_path: Path) -> None:
    """`make mar` runs deepfake-build-mar, which records golden requests unless given --no-golden."""
    built = run_command("build_mar", "--version", "7.0", "--weights", str(weights_file),
                       "--model-store", str(tmp_path), "--set", "max_frames=2")
    assert built.returncode == 0, built.stderr
    golden = Archive(tmp_path / f"{MODEL_NAME}-7.0.mar").golden()
    assert golden and golden["model_version"] == "7.0"
    video = next(e for e in golden["requests"] if e["name"] == "carphone.mp4")["response"]
    assert video["sampled_frame_indices"] == [0, 119]  # the archive's own max_frames=2: first and last
    with zipfile.ZipFile(tmp_path / f"{MODEL_NAME}-7.0.mar") as mar:
        assert mar.testzip() is None and WEIGHTS_FILE in mar.namelist()


def test_compare_response_applies_the_stated_tolerances(rollout_store: Path) -> None:
    golden = Archive(rollout_store / f"{MODEL_NAME}-1.0.mar").golden()
    assert golden
    recorded = golden["requests"][0]["response"]
    assert compare_response(200, recorded, 200, json.loads(json.dumps(recorded))) == []

    def altered(**changes: Any) -> dict[str, Any]:
        copy = json.loads(json.dumps(recorded))
        copy.update(changes)
        return copy

    def shifted(delta: float) -> dict[str, Any]:
        """The same answer with every fake probability moved by ``delta`` (still a consistent verdict)."""
        copy = altered(fake_probability=recorded["fake_probability"] + delta)
        copy["faces"][0]["fake_probability"] += delta
        copy["confidence"] += delta if recorded["label"] == "FAKE" else -delta
        return copy

    assert compare_response(200, recorded, 200, shifted(0.5 * PROBABILITY_TOLERANCE)) == []
    assert any("fake_probability" in problem for problem in
               compare_response(200, recorded, 200, shifted(2 * PROBABILITY_TOLERANCE)))
    inconsistent = altered(fake_probability=recorded["fake_probability"] + 0.5 * PROBABILITY_TOLERANCE)
    assert any("not a valid verdict" in problem for problem in compare_response(200, recorded, 200, inconsistent))
    moved = altered()
    moved["faces"][0]["box"][0] += 1.0
    assert any("box" in problem for problem in compare_response(200, recorded, 200, moved))
    flipped = altered(label="FAKE" if recorded["label"] == "REAL" else "REAL")
    assert any("label" in problem for problem in compare_response(200, recorded, 200, flipped))
    assert compare_response(200, recorded, 503, {"code": 503}) != []
    assert compare_response(200, recorded, 200, altered(model={**recorded["model"], "version": "9"})) != []


def test_a_label_may_flip_only_at_the_threshold_and_recorded_tolerances_apply() -> None:
    """Recorded 0.50003 FAKE, live 0.49998 REAL: within the tolerance of the threshold, so a match (the
    confidences then belong to different labels and are not compared); the archive's own tolerances count."""
    recorded, live = image_verdict(0.50003).to_json(), image_verdict(0.49998).to_json()
    assert (recorded["label"], live["label"]) == ("FAKE", "REAL")
    assert compare_response(200, recorded, 200, live) == []
    far = image_verdict(0.4).to_json()
    assert any("label" in problem for problem in compare_response(200, image_verdict(0.6).to_json(), 200, far))
    moved = image_verdict(0.6).to_json()
    moved["faces"][0]["box"][0] += 1.0
    assert compare_response(200, image_verdict(0.6).to_json(), 200, moved) != []
    assert compare_response(200, image_verdict(0.6).to_json(), 200, moved, Tolerances(box_px=2.0)) == []
    assert Tolerances.recorded({"format": 1, "tolerances": {"box_px": 2.0}}) == Tolerances(box_px=2.0)


def test_each_answer_is_held_to_the_tolerance_of_its_compute() -> None:
    """A GPU answer in fp16 meets its own recorded tolerance, not fp32's 1e-4; where it ran is not a
    mismatch, but any other change of the model block is; archives of the first format keep their flat set."""
    recorded = image_verdict(0.6).to_json()
    live = image_verdict(0.605).to_json()
    live["model"]["compute"] = "cuda/fp16"
    golden = {"format": GOLDEN_FORMAT, "tolerances": {compute: tolerances.to_json()
                                                      for compute, tolerances in COMPUTE_TOLERANCES.items()}}
    assert answer_compute(live) == "cuda/fp16" and answer_compute(recorded) == "cpu/fp32"
    assert compare_response(200, recorded, 200, live, Tolerances.recorded(golden, "cpu/fp32")) != []
    assert compare_response(200, recorded, 200, live, Tolerances.recorded(golden, answer_compute(live))) == []
    for key, value in (("name", "other"), ("backbone", "efficientnet_b0"), ("trained", True)):
        changed = {**live, "model": {**live["model"], key: value}}
        problems = compare_response(200, recorded, 200, changed, Tolerances.recorded(golden, "cuda/fp16"))
        assert any(problem.startswith("model") for problem in problems), key
    first_format = {"format": 1, "tolerances": {"probability": 2e-4}}
    assert Tolerances.recorded(first_format, "cpu/fp32") == Tolerances(probability=2e-4)
    assert Tolerances.recorded(first_format, "cuda/fp16") == COMPUTE_TOLERANCES["cuda/fp16"]
