"""The built-in default: a seeded, deterministic, untrained detector whose scores still move with the pixels.

It lets the whole serving path run, and its parity checks mean something, before any training; every
answer it gives says ``"trained": false``.
"""

from __future__ import annotations

import torch
from torch import nn

from .architecture import DeepfakeDetector
from .config import ModelConfig


def build_detector(config: ModelConfig | None = None, seed: int | None = None) -> DeepfakeDetector:
    """A detector; with ``seed``, a deterministic untrained one whose outputs still depend on the input.

    A freshly initialised EfficientNet pools its features to ~1e-5 and the head's BatchNorm statistics
    are the identity, so every input would score the same ~0.5. The seeded build therefore fits the
    head's BatchNorm statistics, and the scale and offset of its last layer, to seeded synthetic images
    (1/f noise of random contrast, brightness and tint): still untrained and reproducible, but with
    fake probabilities that move with the pixels, which keeps serving-parity checks meaningful.
    """
    config = config or ModelConfig()
    if seed is None:
        return DeepfakeDetector(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DeepfakeDetector(config)
    _spread_untrained_outputs(model, torch.Generator().manual_seed(seed))
    return model


def _synthetic_images(count: int, config: ModelConfig, generator: torch.Generator) -> torch.Tensor:
    """Normalised images with a natural 1/f spectrum and random contrast, brightness and tint."""
    size = config.input_size
    images = torch.zeros(count, 3, size, size)
    scale = 4
    while scale <= size:
        octave = torch.randn(count, 3, scale, scale, generator=generator)
        upsampled = nn.functional.interpolate(octave, size=(size, size), mode="bilinear", align_corners=False)
        images += upsampled / scale**0.5
        scale *= 2
    images = (images - images.mean(dim=(1, 2, 3), keepdim=True)) / images.std(dim=(1, 2, 3), keepdim=True)
    contrast = torch.rand(count, 1, 1, 1, generator=generator) * 0.3 + 0.05
    brightness = torch.rand(count, 1, 1, 1, generator=generator) * 0.5 + 0.2
    tint = torch.rand(count, 3, 1, 1, generator=generator) * 0.2 - 0.1
    pixels = (images * contrast + brightness + tint).clamp(0, 1)
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return (pixels - mean) / std


@torch.no_grad()
def _spread_untrained_outputs(model: DeepfakeDetector, generator: torch.Generator, count: int = 32) -> None:
    model.eval()
    features = model.forward_features(_synthetic_images(count, model.config, generator))
    dropout, linear, relu, norm = model.head[:4]
    hidden = relu(linear(dropout(features)))
    norm.running_mean.copy_(hidden.mean(dim=0))
    norm.running_var.copy_(hidden.var(dim=0))
    logits = model.head(features)
    fake, real = model.config.fake_index, 1 - model.config.fake_index
    margin = logits[:, fake] - logits[:, real]
    last = model.head[-1]
    factor = 1.0 / margin.std().clamp_min(1e-12)
    last.weight.mul_(factor)
    last.bias.mul_(factor)
    last.bias[fake] -= factor * margin.mean()
