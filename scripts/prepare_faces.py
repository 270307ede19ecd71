"""Face crops and their index from a video or image dataset, cut with the server's own face cropper.

    python scripts/prepare_faces.py DATASET_ROOT data/faces --frame-stride 10 --max-frames 32 --size 224

DATASET_ROOT is a FaceForensics++ folder (original_sequences/, manipulated_sequences/) or a tree with
real/ and fake/. Writes data/faces/crops/**.png and data/faces/index.csv (source, group, frame, face, label,
split, crop, face box). Splits are decided per group (a video, or a folder under real/ or fake/), so frames
of one video never fall into two splits. Run it again to resume: finished sources are skipped.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from deepfake_detector.config import DEFAULT_FACE_MARGIN, PipelineSettings
from deepfake_training.index import read_index
from deepfake_training.prepare import PrepareOptions, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="dataset root (FaceForensics++ layout, or real/ and fake/)")
    parser.add_argument("output", type=Path, help="folder for crops/ and index.csv")
    parser.add_argument("--frame-stride", type=int, default=10, help="video: every Nth frame (default 10)")
    parser.add_argument("--max-frames", type=int, default=32, help="video: at most this many frames (default 32)")
    parser.add_argument("--size", type=int, default=224, help="crop side = the model's input size (default 224)")
    parser.add_argument("--faces-per-frame", type=int, default=1, help="most confident faces kept (default 1)")
    parser.add_argument("--no-face", choices=("skip", "center"), default="skip",
                        help="frames without a face: skip them, or keep the server's centre crop")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0, help="salt of the per-group split hash")
    parser.add_argument("--face-margin", type=float, default=DEFAULT_FACE_MARGIN,
                        help="crop side = face side x (1 + margin), kept in the weights' config")
    parser.add_argument("--device", default="cpu", help="MTCNN device (cpu, cuda)")
    args = parser.parse_args(argv)

    options = PrepareOptions(
        frame_stride=args.frame_stride, max_frames=args.max_frames, crop_size=args.size,
        faces_per_frame=args.faces_per_frame, no_face=args.no_face, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, seed=args.seed, face_margin=args.face_margin,
    )
    try:
        index = prepare(args.root, args.output, options, PipelineSettings(), args.device)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    rows = read_index(index)
    counts = Counter((row.split, row.label) for row in rows)
    groups = Counter(row.split for row in {(r.group, r.split): r for r in rows}.values())
    print(f"{index}: {len(rows)} crops")
    for split in ("train", "val", "test"):
        print(f"  {split:5s}: {counts[(split, 'REAL')]} REAL, {counts[(split, 'FAKE')]} FAKE, {groups[split]} groups")
    return 0


if __name__ == "__main__":
    sys.exit(main())
