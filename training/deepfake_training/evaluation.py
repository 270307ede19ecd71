"""A weights file on one split of the crop index: per frame and per video, as the server would score.

Probabilities come from ``DeepfakeDetector.fake_probability`` (so the stored temperature applies), a
frame scores as its most-fake face and a video by ``deepfake_detector.verdict.video_probability``,
exactly the serving rules. With ``self_blend`` each REAL crop of the split also yields a seeded
self-blended pseudo-fake, and a source's pseudo-fakes count as a video of their own.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from deepfake_detector.architecture import DeepfakeDetector
from deepfake_detector.config import PipelineSettings
from deepfake_detector.verdict import FaceScore, FrameScore, video_probability
from deepfake_detector.weights import load_weights, save_weights
from torch.utils.data import DataLoader

from .data import CropDataset, Sample, collate, make_samples
from .index import read_index
from .metrics import binary_report, fit_temperature, roc_curve
from .trainer import evaluate_logits, pick_device


def score_samples(
    model: DeepfakeDetector, root: Path, samples: list[Sample], batch_size: int, device: torch.device, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, fake probabilities with the model's temperature) for each sample, in order."""
    config = model.config
    loader = DataLoader(CropDataset(root, samples, config.input_size, train=False, seed=seed),
                        batch_size=batch_size, shuffle=False, collate_fn=collate(config.mean, config.std))
    model.to(device, memory_format=torch.channels_last)
    logits = evaluate_logits(model, loader, device)["logits"]
    return logits.numpy(), model.fake_probability(logits).numpy()


def per_video(
    samples: list[Sample], probabilities: np.ndarray, method: str, min_track_frames: int = 2
) -> tuple[list[int], list[float], list[str]]:
    """Targets, scores and keys per video by the server's own rule (``verdict.video_probability``): faces ->
    frame by its most-fake face, frames -> video by ``method``. A face's rank in its frame stands for its track
    (the crops keep no frame coordinates to link by; rank 0, the most confident face, is the main person)."""
    faces: dict[str, dict[int, list[FaceScore]]] = defaultdict(lambda: defaultdict(list))
    centre: dict[str, dict[int, float]] = defaultdict(dict)
    targets: dict[str, int] = {}
    for sample, probability in zip(samples, probabilities.tolist()):
        if sample.row.face < 0:
            centre[sample.video_key][sample.row.frame] = probability
        else:
            faces[sample.video_key][sample.row.frame].append(
                FaceScore((0.0, 0.0, 1.0, 1.0), 1.0, probability, sample.row.face))
        targets[sample.video_key] = sample.target
    keys = sorted(targets)
    scores = []
    for key in keys:
        frames = [FrameScore.scored(f, faces[key].get(f, []), centre[key].get(f))
                  for f in sorted(set(faces[key]) | set(centre[key]))]
        scores.append(video_probability(frames, method, min_track_frames))
    return [targets[k] for k in keys], scores, keys


def evaluate(
    weights: str | Path, index: str | Path, output: str | Path, split: str = "test", self_blend: bool = True,
    settings: PipelineSettings | None = None, batch_size: int = 32, device: str = "auto", seed: int = 0,
) -> dict[str, Any]:
    """Metrics, a ROC curve and a confusion matrix (PNG) and ``results.json`` in ``output``."""
    settings = settings or PipelineSettings()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    rows = [row for row in read_index(index) if row.split == split]
    if not rows:
        raise ValueError(f"{index} has no crop in the {split!r} split")
    samples = make_samples(rows, self_blend)
    model = load_weights(weights)
    _, probabilities = score_samples(model, Path(index).parent, samples, batch_size, pick_device(device), seed)
    frame_targets = [s.target for s in samples]
    video_targets, video_scores, _ = per_video(samples, probabilities, settings.aggregation,
                                                         settings.min_track_frames)
    results = {
        "weights": str(weights),
        "split": split,
        "self_blend": self_blend,
        "model_config": json.loads(model.config.to_json()),
        "aggregation": settings.aggregation,
        "per_frame": binary_report(frame_targets, probabilities, settings.threshold),
        "per_video": binary_report(video_targets, video_scores, settings.threshold),
    }
    plot_roc(frame_targets, probabilities, video_targets, video_scores, output / "roc.png")
    plot_confusion(results["per_frame"]["confusion_matrix"], output / "confusion_matrix.png")
    (output / "results.json").write_text(json.dumps(_without_nan(results), indent=2, allow_nan=False))
    return results


def _without_nan(value: Any) -> Any:
    """NaN (an AUC with a single class) as null, so results.json is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    return value


def calibrate(weights: str | Path, index: str | Path, output_weights: str | Path, self_blend: bool = True,
              batch_size: int = 32, device: str = "auto", seed: int = 0) -> float:
    """Fit a temperature on the val split and write the weights again with it in their ModelConfig."""
    rows = [row for row in read_index(index) if row.split == "val"]
    if not rows:
        raise ValueError(f"{index} has no crop in the val split to fit a temperature on")
    samples = make_samples(rows, self_blend)
    model = load_weights(weights)
    model.config = dataclasses.replace(model.config, temperature=1.0)
    logits, _ = score_samples(model, Path(index).parent, samples, batch_size, pick_device(device), seed)
    fake = model.config.fake_index
    temperature = fit_temperature(logits[:, fake] - logits[:, 1 - fake], [s.target for s in samples])
    model.config = dataclasses.replace(model.config, temperature=temperature)
    save_weights(model.cpu(), output_weights)
    return temperature


def plot_roc(frame_targets, frame_scores, video_targets, video_scores, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(5, 5))
    curves = (("per frame", frame_targets, frame_scores), ("per video", video_targets, video_scores))
    for name, targets, scores in curves:
        if len(set(targets)) == 2:
            fpr, tpr = roc_curve(targets, scores)
            axes.plot(fpr, tpr, label=name)
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axes.set_xlabel("false positive rate (REAL called FAKE)")
    axes.set_ylabel("true positive rate (FAKE called FAKE)")
    axes.set_title("ROC")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_confusion(matrix: list[list[int]], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(4, 4))
    axes.imshow(np.asarray(matrix), cmap="Blues")
    for row in range(2):
        for column in range(2):
            axes.text(column, row, str(matrix[row][column]), ha="center", va="center", fontsize=14)
    axes.set_xticks([0, 1], ["REAL", "FAKE"])
    axes.set_yticks([0, 1], ["REAL", "FAKE"])
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title("confusion matrix (per frame)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
