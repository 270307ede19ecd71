"""ONNX export of a weights file, with a parity check against PyTorch on the same normalised batch.

The export itself is the server's (``deepfake_detector.runtimes.export_onnx``), so a file exported here is the
one a ``forward: onnxruntime`` archive would carry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from deepfake_detector.runtimes import export_onnx as export_network
from deepfake_detector.weights import load_weights


def export_onnx(weights: str | Path, output: str | Path, batch: int = 2, seed: int = 0) -> float:
    """Write ``output`` (logits for a dynamic batch of N x 3 x S x S) with the server's exporter and return the
    largest absolute difference between ONNX Runtime's and PyTorch's logits on a seeded random batch."""
    import onnxruntime

    model = load_weights(weights).eval()
    size = model.config.input_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        expected = model(images).numpy()
    export_network(model, output)
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (actual,) = session.run(["logits"], {"images": images.numpy()})
    return float(np.abs(actual - expected).max())
