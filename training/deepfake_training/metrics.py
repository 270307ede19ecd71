"""Binary metrics on fake probabilities, written out so a hand-computed case can check each of them.

Targets are 1 for FAKE and 0 for REAL; ``probabilities`` are fake probabilities.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

EPSILON = 1e-7


def _arrays(targets: Sequence[int], probabilities: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(targets, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1 or len(y) == 0:
        raise ValueError(f"need two equally long, non-empty 1-D sequences, got {y.shape} and {p.shape}")
    return y, p


def accuracy(targets: Sequence[int], probabilities: Sequence[float], threshold: float = 0.5) -> float:
    y, p = _arrays(targets, probabilities)
    return float(np.mean((p >= threshold).astype(np.int64) == y))


def roc_auc(targets: Sequence[int], probabilities: Sequence[float]) -> float:
    """The probability that a random FAKE scores above a random REAL (ties count half); NaN with one class."""
    y, p = _arrays(targets, probabilities)
    positives, negatives = p[y == 1], p[y == 0]
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan")
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positives) * len(negatives)))


def log_loss(targets: Sequence[int], probabilities: Sequence[float]) -> float:
    y, p = _arrays(targets, probabilities)
    p = np.clip(p, EPSILON, 1 - EPSILON)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def expected_calibration_error(targets: Sequence[int], probabilities: Sequence[float], bins: int = 10) -> float:
    """Top-label ECE: the confidence of each verdict (max(p, 1-p)) against how often it is right,
    over ``bins`` equal-width confidence bins, weighted by the share of samples in each bin."""
    y, p = _arrays(targets, probabilities)
    predicted = (p >= 0.5).astype(np.int64)
    confidence = np.where(predicted == 1, p, 1 - p)
    correct = (predicted == y).astype(np.float64)
    edges = np.linspace(0.5, 1.0, bins + 1)
    total = 0.0
    for number, (low, high) in enumerate(itertools.pairwise(edges)):
        inside = (confidence >= low) & ((confidence < high) if number < bins - 1 else (confidence <= high))
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def confusion_matrix(targets: Sequence[int], probabilities: Sequence[float], threshold: float = 0.5) -> list[list[int]]:
    """[[REAL as REAL, REAL as FAKE], [FAKE as REAL, FAKE as FAKE]]."""
    y, p = _arrays(targets, probabilities)
    predicted = (p >= threshold).astype(np.int64)
    return [[int(((y == t) & (predicted == q)).sum()) for q in (0, 1)] for t in (0, 1)]


def roc_curve(targets: Sequence[int], probabilities: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    y, p = _arrays(targets, probabilities)
    positives, negatives = max(int((y == 1).sum()), 1), max(int((y == 0).sum()), 1)
    fpr, tpr = [0.0], [0.0]
    for threshold in np.unique(p)[::-1]:
        chosen = p >= threshold
        tpr.append(float((chosen & (y == 1)).sum() / positives))
        fpr.append(float((chosen & (y == 0)).sum() / negatives))
    if fpr[-1] != 1.0 or tpr[-1] != 1.0:
        fpr.append(1.0)
        tpr.append(1.0)
    return np.asarray(fpr), np.asarray(tpr)


def binary_report(targets: Sequence[int], probabilities: Sequence[float], threshold: float = 0.5) -> dict:
    y, _ = _arrays(targets, probabilities)
    return {
        "count": len(y),
        "fake": int((y == 1).sum()),
        "real": int((y == 0).sum()),
        "accuracy": accuracy(targets, probabilities, threshold),
        "roc_auc": roc_auc(targets, probabilities),
        "log_loss": log_loss(targets, probabilities),
        "ece": expected_calibration_error(targets, probabilities),
        "confusion_matrix": confusion_matrix(targets, probabilities, threshold),
        "threshold": threshold,
    }


def fit_temperature(logit_margins: Sequence[float], targets: Sequence[int], steps: int = 200) -> float:
    """The temperature T minimising the log loss of sigmoid(margin / T) (margin = fake logit - real logit).

    Softmax over two logits divided by T is exactly that sigmoid, so T fitted here is the one
    ``DeepfakeDetector.fake_probability`` applies from ``ModelConfig.temperature``.
    """
    margins = torch.as_tensor(np.asarray(logit_margins, dtype=np.float64))
    labels = torch.as_tensor(np.asarray(targets, dtype=np.float64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(margins / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))
