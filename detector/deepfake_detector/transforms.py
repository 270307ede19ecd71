"""The preprocessing that training and serving share: where to crop, how to resize, how to normalise.

Serving and training both call these functions, so the pixels a model was trained on and the pixels
it is served are produced by the same code. Crops are square, so a face is never stretched.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

Box = tuple[float, float, float, float]
Region = tuple[int, int, int, int]


def face_region(box: Box, width: int, height: int, margin: float) -> Region:
    """Square (x1, y1, x2, y2) around a face box, enlarged by ``margin`` and shifted inside the image.

    The side is ``max(box width, box height) * (1 + margin)``, capped at the image's shorter side, so
    the crop keeps the face's aspect ratio and always lies entirely inside the image.
    """
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1.0 + margin)
    side = round(min(max(side, 1.0), width, height))
    center_x, center_y = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    left = round(min(max(center_x - side / 2.0, 0), width - side))
    top = round(min(max(center_y - side / 2.0, 0), height - side))
    return left, top, left + side, top + side


def center_region(width: int, height: int) -> Region:
    """The largest centred square: the crop scored when no face is found."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def crop_and_resize(image: np.ndarray, region: Region, size: int, crop_filter: str = "area") -> np.ndarray:
    """An HxWx3 uint8 crop of ``region`` resized to ``size`` x ``size``.

    ``crop_filter`` is the weights' (ModelConfig.crop_filter): ``area`` shrinks with an area filter and
    enlarges bilinearly, ``linear`` is bilinear both ways.
    """
    x1, y1, x2, y2 = region
    crop = image[y1:y2, x1:x2]
    if crop.shape[0] == size and crop.shape[1] == size:
        return np.ascontiguousarray(crop)
    shrinking = crop.shape[0] > size
    interpolation = cv2.INTER_AREA if shrinking and crop_filter == "area" else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interpolation)


def normalize(
    crops: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 crops (N, H, W, 3) -> normalised float (N, 3, H, W) in channels_last memory.

    Runs on whatever device ``crops`` is on, so a GPU receives uint8 (4x fewer bytes) and normalises there.
    """
    mean_t = torch.tensor(mean, device=crops.device, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=crops.device, dtype=torch.float32).view(1, 3, 1, 1)
    images = crops.permute(0, 3, 1, 2).float().div_(255.0)
    images = images.sub_(mean_t).div_(std_t)
    return images.to(dtype=dtype, memory_format=torch.channels_last)


def crops_to_tensor(
    crops: Sequence[np.ndarray] | np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Convenience for training and tests: a list of uint8 crops -> normalised CPU batch."""
    array = np.stack(list(crops)) if not isinstance(crops, np.ndarray) else crops
    return normalize(torch.from_numpy(np.ascontiguousarray(array)), mean, std)
