"""The response schema the load tests hold every answer to (the README's "Response" section, as code).

Plain Python with no third-party imports, so the locustfile, the benchmark and the tests share it.
``schema_problems`` returns a list of sentences; an empty list means the answer is valid.
"""

from __future__ import annotations

from typing import Any

_NUMBER = (int, float)
_MODEL_KEYS = {"name": str, "version": str, "backbone": str, "trained": bool}


def schema_problems(answer: Any, kind: str | None = None) -> list[str]:
    """What is wrong with one successful response; ``kind`` ("image"/"video") also checks the media type."""
    if not isinstance(answer, dict):
        return [f"the answer is a {type(answer).__name__}, not a JSON object"]
    problems: list[str] = []
    for key, types in (("label", str), ("confidence", _NUMBER), ("fake_probability", _NUMBER),
                       ("threshold", _NUMBER), ("face_detected", bool), ("media", dict), ("model", dict)):
        if not isinstance(answer.get(key), types):
            problems.append(f"{key!r} is missing or has the wrong type ({answer.get(key)!r})")
    if problems:
        return problems
    if answer["label"] not in ("REAL", "FAKE"):
        problems.append(f"label {answer['label']!r} is neither REAL nor FAKE")
    probability = answer["fake_probability"]
    if not 0.0 <= probability <= 1.0:
        problems.append(f"fake_probability {probability} is outside [0, 1]")
    expected_label = "FAKE" if probability >= answer["threshold"] else "REAL"
    if answer["label"] != expected_label:
        problems.append(f"label {answer['label']} contradicts fake_probability {probability}")
    expected_confidence = probability if answer["label"] == "FAKE" else 1.0 - probability
    if abs(answer["confidence"] - expected_confidence) > 1e-6:
        problems.append(f"confidence {answer['confidence']} is not the probability of {answer['label']}")
    for key, types in _MODEL_KEYS.items():
        if not isinstance(answer["model"].get(key), types):
            problems.append(f"model.{key} is missing or has the wrong type")
    media = answer["media"]
    media_type = media.get("type")
    if kind is not None and media_type != kind:
        problems.append(f"media.type is {media_type!r}, expected {kind!r}")
    for key in ("format", "width", "height"):
        if key not in media:
            problems.append(f"media.{key} is missing")
    if media_type == "image":
        problems += _faces_problems(answer.get("faces"), "faces")
    elif media_type == "video":
        problems += _video_problems(answer)
    else:
        problems.append(f"media.type {media_type!r} is neither image nor video")
    return problems


def _faces_problems(faces: Any, where: str) -> list[str]:
    if not isinstance(faces, list):
        return [f"{where} is not a list"]
    problems = []
    for index, face in enumerate(faces):
        box = face.get("box") if isinstance(face, dict) else None
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, _NUMBER) for v in box)):
            problems.append(f"{where}[{index}].box is not four numbers")
        elif not (box[0] < box[2] and box[1] < box[3]):
            problems.append(f"{where}[{index}].box {box} is empty")
        for key in ("detection_probability", "fake_probability"):
            value = face.get(key) if isinstance(face, dict) else None
            if not (isinstance(value, _NUMBER) and 0.0 <= value <= 1.0):
                problems.append(f"{where}[{index}].{key} is not a probability")
    return problems


def _video_problems(answer: dict[str, Any]) -> list[str]:
    problems = []
    for key, types in (("frame_stride", int), ("aggregation", str), ("sampled_frame_indices", list),
                       ("frames", list)):
        if not isinstance(answer.get(key), types):
            problems.append(f"{key!r} is missing or has the wrong type")
    if problems:
        return problems
    frames = answer["frames"]
    if not frames:
        problems.append("a video answer has no frames")
    if [f.get("index") for f in frames if isinstance(f, dict)] != answer["sampled_frame_indices"]:
        problems.append("frames' indices differ from sampled_frame_indices")
    for position, frame in enumerate(frames):
        if not isinstance(frame, dict) or not isinstance(frame.get("fake_probability"), _NUMBER):
            problems.append(f"frames[{position}] has no fake_probability")
            continue
        problems += _faces_problems(frame.get("faces"), f"frames[{position}].faces")
    return problems
