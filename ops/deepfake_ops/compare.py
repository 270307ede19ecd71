"""A/B comparison of two versions on the live server, over a labelled set of images or videos.

    deepfake-compare DATA --a 1.0 --b 2.0
    deepfake-compare labels.csv --a 1.0 --b 2.0 --json reports/compare.json

DATA is a folder with ``real/`` and ``fake/`` subfolders (every file below them is an input), or a CSV of
``path,label`` rows (label ``real``/``fake`` or ``0``/``1``; relative paths are relative to the CSV; a
``path,label`` header row is allowed). Every input goes to ``/predictions/NAME/A`` and ``/predictions/NAME/B`` (in
alternating order, so neither version always goes first), and the two are printed side by side: errors,
accuracy of their labels, ROC AUC of their fake probabilities, agreement between them, and client-side
latency percentiles. The server is found as by ``deepfake-rollout`` (``--run-dir``, default ``.run/``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepfake_detector.archive import DEFAULT_MODEL_NAME
from deepfake_detector.verdict import Verdict, VerdictError
from deepfake_training.metrics import roc_auc

from .paths import RUN_DIR
from .torchserve import Endpoint, ServerRefusal, TorchServeClient

LABELS = {"real": 0, "fake": 1, "0": 0, "1": 1}
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Sample:
    path: Path
    is_fake: bool


@dataclass
class Outcome:
    status: int
    fake_probability: float | None
    label: str | None
    seconds: float
    error: str | None = None


def load_labelled_set(source: Path) -> list[Sample]:
    """Samples from a folder with real/ and fake/ below it, or from a path,label CSV."""
    source = Path(source)
    if source.is_dir():
        samples = []
        for folder, is_fake in (("real", False), ("fake", True)):
            root = source / folder
            if not root.is_dir():
                raise ValueError(f"{source} has no {folder}/ folder: expected real/ and fake/ subfolders")
            samples += [Sample(path, is_fake) for path in sorted(root.rglob("*"))
                        if path.is_file() and not path.name.startswith(".")]
    elif source.is_file():
        samples = []
        with source.open(newline="") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                if len(row) < 2:
                    raise ValueError(f"{source}:{number}: expected path,label, got {row}")
                path, label = row[0].strip(), row[1].strip().lower()
                if number == 1 and label == "label":
                    continue  # the header row
                if label not in LABELS:
                    raise ValueError(f"{source}:{number}: label {row[1]!r} is not real, fake, 0 or 1")
                resolved = Path(path) if Path(path).is_absolute() else source.parent / path
                if not resolved.is_file():
                    raise ValueError(f"{source}:{number}: no file {resolved}")
                samples.append(Sample(resolved, bool(LABELS[label])))
    else:
        raise ValueError(f"{source} is neither a folder with real/ and fake/ nor a CSV file")
    if not samples:
        raise ValueError(f"{source} holds no inputs")
    return samples


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def score(client: TorchServeClient, name: str, version: str, body: bytes) -> Outcome:
    answer = client.predict(name, version, body)
    if answer.status != 200:
        error = answer.body.get("error") if isinstance(answer.body, dict) else str(answer.body)[:80]
        return Outcome(answer.status, None, None, answer.seconds, error or "no verdict")
    try:
        verdict = Verdict.from_json(answer.body)
    except VerdictError as problem:
        return Outcome(200, None, None, answer.seconds, f"not a verdict ({problem})")
    if verdict.model.version != version:
        return Outcome(200, None, None, answer.seconds, f"answered by version {verdict.model.version}")
    return Outcome(200, verdict.fake_probability, verdict.label, answer.seconds)


def version_metrics(samples: list[Sample], outcomes: list[Outcome]) -> dict[str, Any]:
    scored = [(s, o) for s, o in zip(samples, outcomes, strict=True) if o.fake_probability is not None]
    latencies_ms = [1000 * o.seconds for o in outcomes]
    correct = sum(1 for s, o in scored if (o.label == "FAKE") == s.is_fake)
    return {
        "inputs": len(samples),
        "errors": len(samples) - len(scored),
        "error_codes": sorted({f"{o.status} {o.error}" for o in outcomes if o.fake_probability is None}),
        "accuracy": correct / len(scored) if scored else None,
        "roc_auc": _auc([s.is_fake for s, _ in scored], [o.fake_probability for _, o in scored]),
        "latency_ms": {f"p{q}": percentile(latencies_ms, q) for q in PERCENTILES}
        | {"mean": sum(latencies_ms) / len(latencies_ms)},
    }


def _auc(is_fake: list[bool], scores: list[float | None]) -> float | None:
    """ROC AUC, or None (JSON null) when a class is missing."""
    if not scores or all(is_fake) or not any(is_fake):
        return None
    return roc_auc([int(fake) for fake in is_fake], scores)  # type: ignore[arg-type]


def compare(
    client: TorchServeClient, name: str, samples: list[Sample], version_a: str, version_b: str,
    log: Any = None,
) -> dict[str, Any]:
    """Send every sample to both versions and compute each one's metrics and their agreement."""
    if version_a == version_b:
        raise ValueError("compare two different versions")
    outcomes: dict[str, list[Outcome]] = {version_a: [], version_b: []}
    for number, sample in enumerate(samples):
        body = sample.path.read_bytes()
        order = (version_a, version_b) if number % 2 == 0 else (version_b, version_a)
        for version in order:
            outcomes[version].append(score(client, name, version, body))
        if log:
            a, b = outcomes[version_a][-1], outcomes[version_b][-1]
            log(f"  {'fake' if sample.is_fake else 'real'}  {sample.path.name:<32} "
                f"{_cell(a):>16} {_cell(b):>16}")
    pairs = [(a, b) for a, b in zip(outcomes[version_a], outcomes[version_b], strict=True)
             if a.fake_probability is not None and b.fake_probability is not None]
    differences = [abs(a.fake_probability - b.fake_probability) for a, b in pairs]  # type: ignore[operator]
    return {
        "model": name,
        "inputs": len(samples),
        "fake_inputs": sum(s.is_fake for s in samples),
        "versions": {version: version_metrics(samples, outcomes[version])
                     for version in (version_a, version_b)},
        "agreement": {
            "compared": len(pairs),
            "same_label": sum(a.label == b.label for a, b in pairs) / len(pairs) if pairs else None,
            "mean_abs_probability_difference": sum(differences) / len(differences) if differences else None,
            "max_abs_probability_difference": max(differences) if differences else None,
        },
        "per_input": [
            {"path": str(s.path), "is_fake": s.is_fake}
            | {version: {"status": outcomes[version][i].status,
                         "fake_probability": outcomes[version][i].fake_probability,
                         "label": outcomes[version][i].label,
                         "ms": round(1000 * outcomes[version][i].seconds, 1)}
               for version in (version_a, version_b)}
            for i, s in enumerate(samples)
        ],
    }


def _cell(outcome: Outcome) -> str:
    if outcome.fake_probability is None:
        return f"HTTP {outcome.status} {outcome.error}"
    return f"{outcome.label} {outcome.fake_probability:.4f}"


def format_report(report: dict[str, Any]) -> str:
    a, b = report["versions"]
    metrics = report["versions"]

    def number(value: float | None, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    rows = [("inputs", str(metrics[a]["inputs"]), str(metrics[b]["inputs"])),
            ("errors", str(metrics[a]["errors"]), str(metrics[b]["errors"])),
            ("accuracy", number(metrics[a]["accuracy"]), number(metrics[b]["accuracy"])),
            ("ROC AUC", number(metrics[a]["roc_auc"]), number(metrics[b]["roc_auc"]))]
    for key in ("p50", "p90", "p99", "mean"):
        rows.append((f"latency {key} ms", number(metrics[a]["latency_ms"][key], 1),
                     number(metrics[b]["latency_ms"][key], 1)))
    lines = [f"{report['model']}: {report['inputs']} inputs ({report['fake_inputs']} fake)",
             f"  {'':<20}{'version ' + a:>14}{'version ' + b:>14}"]
    lines += [f"  {label:<20}{left:>14}{right:>14}" for label, left, right in rows]
    agreement = report["agreement"]
    lines.append(f"  agreement: same label on {number(agreement['same_label'])} of {agreement['compared']} "
                 f"inputs scored by both; |fake probability difference| mean "
                 f"{number(agreement['mean_abs_probability_difference'], 4)}, max "
                 f"{number(agreement['max_abs_probability_difference'], 4)}")
    for version in (a, b):
        if metrics[version]["error_codes"]:
            lines.append(f"  errors of {version}: {', '.join(metrics[version]['error_codes'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="folder with real/ and fake/, or a path,label CSV")
    parser.add_argument("--a", required=True, help="first version, e.g. the current default")
    parser.add_argument("--b", required=True, help="second version, e.g. the candidate")
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR)
    parser.add_argument("--inference-url", help="default: inference_address of the run folder's config")
    parser.add_argument("--json", type=Path, help="also write the full report (with every input) here")
    parser.add_argument("--quiet", action="store_true", help="do not print a line per input")
    args = parser.parse_args(argv)
    if args.a == args.b:
        parser.error("--a and --b must be two different versions")
    try:
        samples = load_labelled_set(args.data)
        client = TorchServeClient(Endpoint.from_run_dir(args.run_dir, inference_url=args.inference_url))
        if not args.quiet:
            print(f"  {'truth':<6}{'input':<33}{'version ' + args.a:>16} {'version ' + args.b:>16}")
        report = compare(client, args.name, samples, args.a, args.b, log=None if args.quiet else print)
    except (ValueError, ServerRefusal) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    missing = [v for v in (args.a, args.b) if report["versions"][v]["errors"] == report["inputs"]]
    if missing:
        print(f"error: every request to version(s) {', '.join(missing)} failed (not registered? see "
              "`deepfake-rollout status`)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
