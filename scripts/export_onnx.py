"""Export a weights file to ONNX and print the largest difference from PyTorch's output.

    python scripts/export_onnx.py runs/lite0/best.safetensors runs/lite0/best.onnx

The ONNX graph maps normalised images (N x 3 x S x S, S = the ModelConfig's input size) to logits ordered
as the ModelConfig's class_names; divide by its temperature before the softmax, as the server does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deepfake_training.onnx_export import export_onnx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--tolerance", type=float, default=1e-3, help="fail when the difference exceeds this")
    args = parser.parse_args(argv)
    difference = export_onnx(args.weights, args.output)
    print(f"{args.output}: largest absolute logit difference ONNX Runtime vs PyTorch = {difference:.3e}")
    if difference > args.tolerance:
        print(f"error: difference above the tolerance {args.tolerance}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
