"""The weights file: safetensors tensors with their ModelConfig in the metadata.

Loading never runs pickle, and the input size, normalisation, class order and crop margin always come with
the tensors they describe.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .architecture import DeepfakeDetector
from .archive import file_sha256
from .config import ModelConfig
from .errors import WeightsMismatchError

CONFIG_METADATA_KEY = "deepfake_detector.model_config"
FINGERPRINT_KEY = "deepfake_detector.weights_fingerprint"
"""Metadata key under which a derived file (the int8 export) records :func:`tensor_fingerprint` of its weights."""


def save_weights(model: DeepfakeDetector, path: str | Path) -> str:
    """Write the model's tensors and config as safetensors; returns the file's sha256."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(path), metadata={CONFIG_METADATA_KEY: model.config.to_json()})
    return file_sha256(path)


def tensor_fingerprint(model: DeepfakeDetector) -> str:
    """sha256 over the model's config and every tensor of its state, in order: which weights a file derived
    from them (an int8 export, whose numbers no longer match the weights') was made from."""
    digest = hashlib.sha256(model.config.to_json().encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_model_config(path: str | Path) -> ModelConfig:
    """The ModelConfig stored in a weights file, without loading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except SafetensorError as error:
        raise WeightsMismatchError(f"{path} is not a safetensors file ({error}); weights are written by "
                                   "save_weights() (training writes them so)") from None
    if CONFIG_METADATA_KEY not in metadata:
        raise WeightsMismatchError(
            f"{path} has no '{CONFIG_METADATA_KEY}' metadata: it was not written by save_weights(); "
            "load its tensors into build_detector(ModelConfig(...)) and save them with save_weights()"
        )
    return ModelConfig.from_json(metadata[CONFIG_METADATA_KEY])


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> DeepfakeDetector:
    """Build the architecture the file describes and load its tensors, refusing any mismatch by name."""
    config = read_model_config(path)
    model = DeepfakeDetector(config)
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device=str(map_location)) as handle:
        for name in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
            tensors[name] = handle.get_tensor(name)
    check_state_dict(model, tensors)
    model.load_state_dict(tensors, strict=True)
    return model


def check_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Raise WeightsMismatchError naming every missing, unexpected or wrongly shaped tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(
        f"{name} (file {tuple(tensors[name].shape)}, model {tuple(expected[name].shape)})"
        for name in set(expected) & set(tensors)
        if tensors[name].shape != expected[name].shape
    )
    if missing or unexpected or wrong_shape:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if names:
                shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise WeightsMismatchError("weights do not fit the architecture; " + "; ".join(parts))
