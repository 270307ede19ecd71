"""The detector network and its weights file.

A timm backbone with its classifier removed (``num_classes=0`` yields pooled features) and the design's
head: Dropout 0.5 -> Linear 512 -> ReLU -> BatchNorm1d -> Dropout 0.3 -> Linear 2. Weights are stored as
safetensors with the :class:`ModelConfig` in the file's metadata, so loading never runs pickle and the
input size, normalisation and class order always come with the tensors they describe.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import ModelConfig
from .errors import WeightsMismatchError

CONFIG_METADATA_KEY = "deepfake_detector.model_config"


class DeepfakeDetector(nn.Module):
    """Backbone features -> regularised two-layer head -> logits ordered as ``config.class_names``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0)
        self.num_features: int = self.backbone.num_features
        self.head = nn.Sequential(
            nn.Dropout(config.feature_dropout),
            nn.Linear(self.num_features, config.hidden_size),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(config.hidden_size),
            nn.Dropout(config.hidden_dropout),
            nn.Linear(config.hidden_size, len(config.class_names)),
        )

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, shape (N, num_features)."""
        return self.backbone(images)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def fake_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probability of FAKE for each row of logits."""
        probabilities = torch.softmax(logits.float() / self.config.temperature, dim=1)
        return probabilities[:, self.config.fake_index]


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


def save_weights(model: DeepfakeDetector, path: str | Path) -> str:
    """Write the model's tensors and config as safetensors; returns the file's sha256."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(path), metadata={CONFIG_METADATA_KEY: model.config.to_json()})
    return file_sha256(path)


def read_model_config(path: str | Path) -> ModelConfig:
    """The ModelConfig stored in a weights file, without loading its tensors."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
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


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxRuntimeForward:
    """The network's logits computed by ONNX Runtime on the CPU, from an export of the very same weights.

    Under CPU contention (a TorchServe frontend and other workers on the same cores) ONNX Runtime's thread
    pool degrades far less than PyTorch's OpenMP threads. ``onnx_file`` is exported from ``model`` when it
    does not exist yet. The session is only kept if its fake probabilities agree with the eager fp32 network
    within ``tolerance`` on a seeded batch; otherwise :class:`WeightsMismatchError` is raised and the caller
    keeps PyTorch.
    """

    def __init__(self, model: DeepfakeDetector, onnx_file: str | Path, threads: int, tolerance: float = 1e-4) -> None:
        import onnxruntime

        self.path = Path(onnx_file)
        if not self.path.exists():
            export_onnx(model, self.path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.difference = self._check(model, tolerance)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        inputs = images.contiguous().numpy()
        (logits,) = self.session.run(None, {self.input_name: inputs})
        return torch.from_numpy(logits)

    def _check(self, model: DeepfakeDetector, tolerance: float) -> float:
        size = model.config.input_size
        images = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0)) * 4 - 2
        with torch.inference_mode():
            expected = model.fake_probability(model(images))
        actual = model.fake_probability(self(images))
        difference = float((actual - expected).abs().max())
        if not difference <= tolerance:
            raise WeightsMismatchError(
                f"ONNX Runtime's fake probabilities differ from PyTorch's by {difference:.2e} (> {tolerance:.0e}) "
                f"for {self.path}: delete it so that it is exported again from the weights"
            )
        return difference


def export_onnx(model: DeepfakeDetector, path: str | Path) -> Path:
    """Write the network (normalised N x 3 x S x S images -> logits, dynamic batch) as ONNX."""
    size = model.config.input_size
    path = Path(path)
    partial = path.with_suffix(".partial.onnx")
    was_training = model.training
    model.eval()
    with torch.inference_mode(), warnings.catch_warnings():
        # The TorchScript exporter: same parity as the torch.export one here, in a tenth of the time.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.zeros(1, 3, size, size),), str(partial), input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=18, dynamo=False,
        )
    model.train(was_training)
    partial.replace(path)
    return path
