"""Prepared crops -> training and evaluation samples.

With ``self_blend`` every REAL crop is used twice per epoch: as itself (REAL) and as a fresh self-blended
pseudo-fake (FAKE). Evaluation sets draw their pseudo-fakes from a seed per crop, so they are the same
on every run. Samples stay uint8 HxWx3 until ``collate`` hands the batch to the server's ``normalize``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from deepfake_detector.transforms import crop_and_resize, normalize
from torch.utils.data import Dataset

from .augment import augment_crop, design_augmentations
from .blending import self_blend
from .index import CropRow


@dataclass(frozen=True)
class Sample:
    """One item of a set: a crop, and whether it is turned into a pseudo-fake."""

    row: CropRow
    blended: bool

    @property
    def target(self) -> int:
        return 1 if self.blended else self.row.target

    @property
    def video_key(self) -> str:
        """The unit of per-video aggregation: a source, and its pseudo-fake twin apart from it."""
        return f"{self.row.source}#{'blended' if self.blended else self.row.label}"


def make_samples(rows: Sequence[CropRow], self_blend_reals: bool) -> list[Sample]:
    samples = [Sample(row, False) for row in rows]
    if self_blend_reals:
        samples += [Sample(row, True) for row in rows if row.label == "REAL"]
    return samples


def load_crop(root: Path, row: CropRow, size: int) -> tuple[np.ndarray, float]:
    """The crop as RGB uint8 at ``size`` (resized, if it must be, by the server's ``crop_and_resize``) and
    the factor from the stored crop's pixels, in which the index gives the face box, to the returned ones."""
    image = cv2.imread(str(root / row.crop), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"crop {root / row.crop} is missing or unreadable; prepare the faces again")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image, 1.0
    return crop_and_resize(image, (0, 0, width, height), size), size / width


class CropDataset(Dataset):
    """Samples -> (uint8 crop, target). ``train`` draws new blends and augmentations every time."""

    def __init__(
        self, root: str | Path, samples: Sequence[Sample], size: int, train: bool, seed: int = 0, augment: bool = True
    ) -> None:
        self.root = Path(root)
        self.samples = list(samples)
        self.size = size
        self.train = train
        self.seed = seed
        self.transform = design_augmentations() if train and augment else None
        self._cache: dict[str, tuple[np.ndarray, float]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, position: int) -> tuple[np.ndarray, int]:
        sample = self.samples[position]
        cached = self._cache.get(sample.row.crop)
        if cached is None:
            cached = self._cache[sample.row.crop] = load_crop(self.root, sample.row, self.size)
        crop, scale = cached
        if sample.blended:
            box = tuple(v * scale for v in sample.row.face_box)
            crop = self_blend(crop, box, self._rng(sample))
        if self.transform is not None:
            crop = augment_crop(crop, self.transform)
        return crop, sample.target

    def _rng(self, sample: Sample) -> np.random.Generator:
        if self.train:  # new blends every time, reproducible from torch's seed
            return np.random.default_rng(int(torch.randint(0, 2**62, (1,))))
        digest = hashlib.sha256(f"{self.seed}:{sample.row.crop}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def collate(mean: Sequence[float], std: Sequence[float]):
    """A collate function: uint8 crops -> the server's normalised batch, and the targets."""

    def stack(items: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        crops = torch.from_numpy(np.stack([crop for crop, _ in items]))
        targets = torch.tensor([target for _, target in items], dtype=torch.long)
        return normalize(crops, mean, std), targets

    return stack
