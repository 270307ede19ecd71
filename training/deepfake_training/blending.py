"""Self-blended pseudo-fakes: a face blended with a jittered copy of itself inside a soft face mask.

After Shiohara and Yamasaki, "Detecting Deepfakes with Self-Blended Images" (CVPR 2022). A real crop is the
target; a copy of it, shifted in colour and slightly in geometry (scale, translation) and sharpened or
blurred, is the source. Pasting the source into the target through a blurred, deformed ellipse inside the
detected face box leaves exactly the traces face swaps leave (a blending boundary, a colour mismatch, a
landmark offset) without any identity change, so a detector learns them from real faces alone.
"""

from __future__ import annotations

import cv2
import numpy as np

Box = tuple[float, float, float, float]


def face_mask(size: int, box: Box, rng: np.random.Generator) -> np.ndarray:
    """A float mask in [0, 1]: a randomly sized, deformed and blurred ellipse inside ``box``."""
    x1, y1, x2, y2 = box
    if x2 - x1 < 2 or y2 - y1 < 2:
        x1, y1, x2, y2 = 0.15 * size, 0.15 * size, 0.85 * size, 0.85 * size
    center = ((x1 + x2) / 2 + rng.uniform(-0.04, 0.04) * (x2 - x1),
              (y1 + y2) / 2 + rng.uniform(-0.02, 0.06) * (y2 - y1))
    axes = ((x2 - x1) / 2 * rng.uniform(0.65, 1.0), (y2 - y1) / 2 * rng.uniform(0.7, 1.05))
    mask = np.zeros((size, size), np.float32)
    cv2.ellipse(mask, (round(center[0]), round(center[1])), (max(1, round(axes[0])), max(1, round(axes[1]))),
                rng.uniform(-10, 10), 0, 360, 1.0, thickness=-1)
    mask = _deform(mask, rng, strength=0.04)
    kernel = 2 * int(rng.integers(1, max(2, size // 12))) + 1
    mask = cv2.GaussianBlur(mask, (kernel, kernel), 0)
    if mask.max() > 0:
        mask /= mask.max()
    return mask


def self_blend(crop: np.ndarray, box: Box, rng: np.random.Generator) -> np.ndarray:
    """A pseudo-fake of the uint8 HxWx3 ``crop``; ``box`` is the face box in the crop's pixels."""
    size = crop.shape[0]
    target = crop.astype(np.float32)
    source = _jitter_colour(target, rng)
    source = _jitter_sharpness(source, rng)
    source = _jitter_geometry(source, rng)
    mask = face_mask(size, box, rng)[..., None]
    ratio = float(rng.choice([0.25, 0.5, 0.75, 1.0, 1.0, 1.0]))
    blended = source * mask * ratio + target * (1.0 - mask * ratio)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def _jitter_colour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shift = rng.uniform(-20, 20, size=3).astype(np.float32)
    contrast = rng.uniform(0.85, 1.15)
    brightness = rng.uniform(-20, 20)
    mean = image.mean(axis=(0, 1), keepdims=True)
    jittered = (image - mean) * contrast + mean + brightness + shift
    hsv = cv2.cvtColor(np.clip(jittered, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-5, 5)) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.85, 1.15), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)


def _jitter_sharpness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    blurred = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.5))
    if rng.random() < 0.5:
        return blurred
    amount = rng.uniform(0.3, 1.0)
    return np.clip(image + amount * (image - blurred), 0, 255)


def _jitter_geometry(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = image.shape[0]
    scale_x, scale_y = rng.uniform(0.95, 1.05, size=2)
    shift_x, shift_y = rng.uniform(-0.03, 0.03, size=2) * size
    center = size / 2
    matrix = np.array([[scale_x, 0, center - scale_x * center + shift_x],
                       [0, scale_y, center - scale_y * center + shift_y]], np.float32)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _deform(mask: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A smooth random warp, so that the mask's outline is not a perfect ellipse."""
    size = mask.shape[0]
    grid = 4
    offsets = rng.uniform(-strength, strength, size=(grid, grid, 2)).astype(np.float32) * size
    flow = cv2.resize(offsets, (size, size), interpolation=cv2.INTER_CUBIC)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return cv2.remap(mask, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderValue=0)
