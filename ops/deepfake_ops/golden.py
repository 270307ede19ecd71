"""Golden requests: what an archive answered at build time, so the live server can be checked against it.

At build time (``make mar``) the archive's own handler class runs in a fresh process, from the archive's
extracted contents (``deepfake_ops.archive_handler``), on a few real inputs that ship inside installed
packages. Their package-relative paths, sha256 and the responses are stored in the archive as
``golden.json``. ``deepfake-rollout verify`` replays the same inputs against ``/predictions/NAME/VERSION``
and compares, field by field (both answers read as ``Verdict``s, so an invalid answer fails too):

- fake probabilities (overall, per face, per frame) and ``confidence`` within the probability tolerance;
- face boxes within the box tolerance in pixels, detection probabilities within the detection tolerance;
- everything else exactly: status, error code, label (unless the probability sits within the tolerance of
  the threshold), face counts, sampled frame indices, media description, model name and version.

The answers are recorded on a CPU in the archive's own CPU precision (fp32; int8 for an archive built with
``precision: int8``, whose workers answer as ``cpu/int8``, held within 1e-2: int8 kernels differ between
CPUs). The tolerances are recorded beside them, one set per ``device/precision`` an answer may say it was computed in
(``model.compute``, see ``COMPUTE_TOLERANCES``), and each live answer is held to the set of its own compute:
a GPU replica in fp16 is not held to fp32's 1e-4.

A broken archive, wrong weights or preprocessing that drifted shows up as a mismatch before users see it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deepfake_detector.archive import Archive
from deepfake_detector.verdict import DEFAULT_COMPUTE, FaceScore, Verdict, VerdictError

from .packaged import ASTRONAUT, CARPHONE, CHELSEA, GRACE_HOPPER, package_file

GOLDEN_FORMAT = 3
"""2: tolerances recorded per compute (``{"cpu/fp32": {...}, ...}``); 1: one flat set, for cpu/fp32."""
PROBABILITY_TOLERANCE = 1e-4
BOX_TOLERANCE_PX = 0.5
DETECTION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class GoldenInput:
    """A real file inside an installed package; ``head_bytes`` keeps only its start (a truncated file)."""

    name: str
    package: str
    path: str
    head_bytes: int | None = None

    def locate(self) -> Path:
        return package_file(self.package, self.path)

    def body(self) -> bytes:
        data = self.locate().read_bytes()
        return data if self.head_bytes is None else data[: self.head_bytes]


GOLDEN_INPUTS = (
    GoldenInput("astronaut.png", ASTRONAUT.package, ASTRONAUT.path),  # one face, 512x512
    GoldenInput("grace_hopper.jpg", GRACE_HOPPER.package, GRACE_HOPPER.path),  # one face
    GoldenInput("chelsea.png", CHELSEA.package, CHELSEA.path),  # a cat: no face, centre crop scored
    GoldenInput("carphone.mp4", CARPHONE.package, CARPHONE.path),  # a face video
    GoldenInput("astronaut-truncated.png", ASTRONAUT.package, ASTRONAUT.path, head_bytes=4096),  # an error
)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_archive_handler(model_dir: Path, bodies: list[bytes]) -> list[tuple[int, dict[str, Any]]]:
    """(status, JSON body) for each body, answered by the unpacked archive's own handler in a fresh process
    (``deepfake_ops.archive_handler``), so that only the archive's code is used."""
    with tempfile.TemporaryDirectory(prefix="golden-bodies-") as temp:
        paths = []
        for number, body in enumerate(bodies):
            paths.append(Path(temp) / f"{number}.bin")
            paths[-1].write_bytes(body)
        request = json.dumps({"model_dir": str(model_dir), "bodies": [str(path) for path in paths]})
        child = subprocess.run([sys.executable, "-m", "deepfake_ops.archive_handler"], input=request,
                               capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if child.returncode != 0:
        raise RuntimeError(f"the archive's handler failed on the golden inputs:\n{child.stderr[-3000:]}")
    return [(status, response) for status, response in json.loads(child.stdout.splitlines()[-1])]


def record_golden(archive: Path, inputs: tuple[GoldenInput, ...] = GOLDEN_INPUTS) -> dict[str, Any]:
    """Run the archive's handler on the inputs and add ``golden.json`` to the archive; returns its content."""
    mar = Archive(archive)
    bodies = [item.body() for item in inputs]
    with tempfile.TemporaryDirectory(prefix="golden-") as temp:
        outputs = run_archive_handler(mar.extract(temp), bodies)
    model = mar.mar_manifest()
    golden = {
        "format": GOLDEN_FORMAT,
        "model_name": model["modelName"],
        "model_version": model["modelVersion"],
        "tolerances": {compute: tolerances.to_json() for compute, tolerances in COMPUTE_TOLERANCES.items()},
        "requests": [
            {"name": item.name, "package": item.package, "path": item.path, "head_bytes": item.head_bytes,
             "sha256": sha256_bytes(body), "status": status, "response": response}
            for item, body, (status, response) in zip(inputs, bodies, outputs, strict=True)
        ],
    }
    mar.add_golden(golden)
    return golden


def request_body(entry: dict[str, Any]) -> bytes:
    """The bytes of a recorded input, found on this machine and checked against the recorded sha256."""
    item = GoldenInput(entry["name"], entry["package"], entry["path"], entry.get("head_bytes"))
    body = item.body()
    actual = sha256_bytes(body)
    if actual != entry["sha256"]:
        raise ValueError(
            f"golden input {entry['name']} ({entry['package']}/{entry['path']}) on this machine has sha256 "
            f"{actual[:12]}..., the archive recorded {entry['sha256'][:12]}...: install the package versions "
            "of requirements.txt, or rebuild the archive here"
        )
    return body


@dataclass(frozen=True)
class Tolerances:
    """How far a live answer may stray from the recorded one (stored in ``golden.json`` per compute)."""

    probability: float = PROBABILITY_TOLERANCE
    box_px: float = BOX_TOLERANCE_PX
    detection_probability: float = DETECTION_TOLERANCE

    @classmethod
    def recorded(cls, golden: dict[str, Any], compute: str = DEFAULT_COMPUTE) -> Tolerances:
        """The tolerances an archive recorded for answers computed as ``compute``; defaults for what it did not
        record. An archive of the first format recorded one flat set, for ``cpu/fp32``."""
        recorded = golden.get("tolerances") or {}
        if golden.get("format", 1) < 2:
            recorded = {DEFAULT_COMPUTE: recorded}
        base = COMPUTE_TOLERANCES.get(compute, cls())
        entry = recorded.get(compute) or {}
        return replace(base, **{key: float(entry[key]) for key in ("probability", "box_px", "detection_probability")
                                if key in entry})

    def to_json(self) -> dict[str, float]:
        return {"probability": self.probability, "box_px": self.box_px,
                "detection_probability": self.detection_probability}


COMPUTE_TOLERANCES: dict[str, Tolerances] = {
    # The recording's own arrangement: the same numbers up to thread scheduling.
    "cpu/fp32": Tolerances(),
    # TF32 off (runtimes.TorchRuntime): other kernels, the same precision.
    "cuda/fp32": Tolerances(box_px=1.0),
    # The backbone under autocast, the head in fp32. bf16 on a CPU moved a trained model's probabilities
    # by up to 0.024 on the golden inputs (tests/unit/test_precision.py). fp16 keeps 3 more mantissa bits;
    # its bound is not yet measured on a GPU (tests/handler/test_gpu.py holds a GPU worker to it).
    "cpu/bf16": Tolerances(probability=5e-2),
    "cuda/bf16": Tolerances(probability=5e-2, box_px=1.0),
    "cuda/fp16": Tolerances(probability=1e-2, box_px=1.0),
    # Recorded in int8 by the archive's own handler: the same numbers on the same kind of CPU, but ONNX
    # Runtime's u8s8 kernels differ between CPUs with and without VNNI.
    "cpu/int8": Tolerances(probability=1e-2),
}
"""The tolerances recorded into every archive's golden.json, by the ``model.compute`` of an answer."""


def answer_compute(answer: Any) -> str:
    """The ``model.compute`` an answer says it was computed in (``cpu/fp32`` when it does not say)."""
    model = answer.get("model") if isinstance(answer, Mapping) else None
    compute = model.get("compute") if isinstance(model, Mapping) else None
    return compute if isinstance(compute, str) else DEFAULT_COMPUTE


def compare_response(
    expected_status: int, expected: dict[str, Any], status: int, actual: Any,
    tolerances: Tolerances = Tolerances(),
) -> list[str]:
    """Every difference between a recorded and a live answer that exceeds the tolerances (empty: a match)."""
    if status != expected_status:
        return [f"status {status}, recorded {expected_status} ({_short(actual)})"]
    if not isinstance(actual, dict):
        return [f"the answer is not a JSON object: {_short(actual)}"]
    if expected_status != 200:
        return [] if actual.get("error") == expected.get("error") else [
            f"error {actual.get('error')!r}, recorded {expected.get('error')!r}"]
    try:
        want = Verdict.from_json(expected)
    except VerdictError as error:
        return [f"the recorded answer is not a verdict ({error}): rebuild the archive"]
    try:
        got = Verdict.from_json(actual)
    except VerdictError as error:
        return [f"the answer is not a valid verdict: {error}"]
    return compare_verdicts(want, got, tolerances)


def compare_verdicts(want: Verdict, got: Verdict, tolerances: Tolerances = Tolerances()) -> list[str]:
    """Differences between two verdicts beyond the tolerances of the module docstring.

    A label may flip only when the recorded probability lies within the tolerance of the threshold; the
    confidence is then that of the other label, so it is compared only when the labels agree.
    """
    problems: list[str] = []
    tolerance = tolerances.probability
    _close(problems, "fake_probability", want.fake_probability, got.fake_probability, tolerance)
    near_threshold = abs(want.fake_probability - want.threshold) <= tolerance
    if got.label != want.label and not near_threshold:
        problems.append(f"label {got.label!r}, recorded {want.label!r}")
    if got.label == want.label:
        _close(problems, "confidence", want.confidence, got.confidence, tolerance)
    for key in ("threshold", "face_detected", "media", "sampling", "aggregation", "min_track_frames"):
        if getattr(got, key) != getattr(want, key):
            problems.append(f"{key} {getattr(got, key)!r}, recorded {getattr(want, key)!r}")
    if replace(got.model, compute=want.model.compute) != want.model:  # where it ran is the tolerance's business
        problems.append(f"model {got.model!r}, recorded {want.model!r}")
    if got.sampled_frame_indices != want.sampled_frame_indices:
        problems.append(f"sampled frames {got.sampled_frame_indices}, recorded {want.sampled_frame_indices}")
        return problems
    for want_frame, got_frame in zip(want.frames, got.frames, strict=True):
        where = "faces" if want.media.type == "image" else f"frame {want_frame.index}"
        if want.media.type == "video":
            _close(problems, f"{where} fake_probability", want_frame.fake_probability,
                   got_frame.fake_probability, tolerance)
        _compare_faces(problems, where, want_frame.faces, got_frame.faces, tolerances)
    return problems


def _compare_faces(problems: list[str], where: str, expected: tuple[FaceScore, ...],
                   actual: tuple[FaceScore, ...], tolerances: Tolerances) -> None:
    if len(expected) != len(actual):
        problems.append(f"{where}: {len(actual)} faces, recorded {len(expected)}")
        return
    for number, (want, got) in enumerate(zip(expected, actual, strict=True)):
        label = f"{where}[{number}]"
        _close(problems, f"{label} fake_probability", want.fake_probability, got.fake_probability,
               tolerances.probability)
        _close(problems, f"{label} detection_probability", want.detection_probability,
               got.detection_probability, tolerances.detection_probability)
        if any(abs(a - b) > tolerances.box_px for a, b in zip(want.box, got.box, strict=True)):
            problems.append(f"{label} box {list(got.box)}, recorded {list(want.box)} "
                            f"(tolerance {tolerances.box_px} px)")


def _close(problems: list[str], key: str, expected: float, actual: float, tolerance: float) -> None:
    if abs(expected - actual) > tolerance:
        problems.append(f"{key} {actual:.6f}, recorded {expected:.6f} (|diff| {abs(expected - actual):.1e} > "
                        f"{tolerance:g})")


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 160 else text[:157] + "..."
