"""Evaluate a weights file on a split of the crop index, per frame and per video, as the server scores.

    python scripts/evaluate.py runs/lite0/best.safetensors data/faces/index.csv reports/eval --split test
    python scripts/evaluate.py W.safetensors INDEX OUT --fit-temperature calibrated.safetensors

Prints and writes results.json (accuracy, ROC AUC, log loss, expected calibration error, confusion matrix),
roc.png and confusion_matrix.png. --self-blend (default on) adds a seeded self-blended pseudo-fake of each
REAL crop; --no-self-blend scores the split's own REAL and FAKE crops only. --fit-temperature fits a
temperature on the val split first and writes the weights with it (the server applies it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deepfake_detector import PipelineSettings
from deepfake_detector.verdict import AGGREGATIONS
from deepfake_training.evaluation import calibrate, evaluate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path)
    parser.add_argument("index", type=Path)
    parser.add_argument("output", type=Path, help="folder for results.json and the PNG plots")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--self-blend", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--aggregation", choices=AGGREGATIONS, default=PipelineSettings().aggregation)
    parser.add_argument("--threshold", type=float, default=PipelineSettings().threshold)
    parser.add_argument("--fit-temperature", type=Path, metavar="OUT.safetensors",
                        help="fit a temperature on val, write the weights with it to this file and evaluate those")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    weights = args.weights
    try:
        if args.fit_temperature:
            temperature = calibrate(weights, args.index, args.fit_temperature, args.self_blend, args.batch_size,
                                    args.device)
            print(f"temperature {temperature:.4f} fitted on val -> {args.fit_temperature}")
            weights = args.fit_temperature
        settings = PipelineSettings(aggregation=args.aggregation, threshold=args.threshold)
        results = evaluate(weights, args.index, args.output, args.split, args.self_blend, settings,
                           args.batch_size, args.device)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for level in ("per_frame", "per_video"):
        figures = results[level]
        print(f"{level:9s}: n={figures['count']} (REAL {figures['real']}, FAKE {figures['fake']})  "
              f"accuracy {figures['accuracy']:.3f}  ROC AUC {figures['roc_auc']:.3f}  "
              f"log loss {figures['log_loss']:.3f}  ECE {figures['ece']:.3f}  "
              f"confusion {json.dumps(figures['confusion_matrix'])}")
    print(f"written: {args.output / 'results.json'}, roc.png, confusion_matrix.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
