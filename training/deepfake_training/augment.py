"""The design's augmentations, applied to uint8 crops before the server's own normalisation.

Flip, rotation +-15 degrees, colour jitter (0.2, 0.2, 0.2, hue 0.1), translation 5%, Gaussian blur
(kernel 3, sigma 0.1-2.0), random erasing (p=0.1): the list of strategy 1, nothing added, nothing left out.
They work on uint8 pixels so that the step from pixels to tensors stays ``deepfake_detector.transforms.normalize``.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2


def design_augmentations() -> v2.Compose:
    return v2.Compose([
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomRotation(degrees=15),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
        v2.RandomAffine(degrees=0, translate=(0.05, 0.05)),
        v2.GaussianBlur(kernel_size=3, sigma=(0.1, 2.0)),
        v2.RandomErasing(p=0.1),
    ])


def augment_crop(crop: np.ndarray, transform: v2.Compose) -> np.ndarray:
    """HxWx3 uint8 -> augmented HxWx3 uint8."""
    image = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)
    return transform(image).permute(1, 2, 0).contiguous().numpy()
