"""Where the network's forward pass runs: PyTorch (CPU or GPU) or ONNX Runtime (CPU), chosen once at load.

Each runtime takes normalised images (N, 3, S, S) on the pipeline's device and returns fp32 logits; the
pipeline calls whichever :func:`select_runtime` picked and never asks again per batch. Each says where and
in which precision it computes (``compute``, e.g. ``cuda/fp16``): answers carry it, and the golden requests
are compared with the tolerance recorded for it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Protocol

import torch

from .architecture import DeepfakeDetector
from .config import PipelineSettings
from .errors import WeightsMismatchError
from .weights import FINGERPRINT_KEY, tensor_fingerprint

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class Runtime(Protocol):
    """Normalised images -> fp32 logits."""

    name: str
    compute: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class TorchRuntime:
    """The eager PyTorch network, the backbone in ``precision`` and the head always in fp32.

    Under fp16 or bf16 only the backbone runs in autocast. The design's head (Linear, ReLU, BatchNorm1d,
    Linear) gets the features as fp32 and runs with autocast off, even inside a caller's autocast region:
    in half precision its normalisation and last projection alone move the fake probability by more than the
    golden requests' 1e-4. On a GPU TF32 is turned off for the worker, so that what runs in fp32 (MTCNN, the
    head, an fp32 backbone) computes in fp32 as on a CPU.
    """

    name = "torch"

    def __init__(self, model: DeepfakeDetector, device: torch.device, precision: str = "fp32") -> None:
        self.model = model
        self.device_type = device.type
        self.autocast_dtype = _AUTOCAST_DTYPES.get(precision)
        self.compute = f"{device.type}/{precision}"
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None:
            features = self.model.forward_features(images)
        else:
            with torch.autocast(self.device_type, dtype=self.autocast_dtype):
                features = self.model.forward_features(images)
        return self.head(features)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The head on fp32 features, in fp32 whatever autocast region the caller is in."""
        with torch.autocast(self.device_type, enabled=False):
            return self.model.forward_head(features.float())


def resolve_precision(settings: PipelineSettings, device: torch.device) -> str:
    """The settings' ``precision`` for this device (``auto``: fp16 on a GPU, fp32 on a CPU), or ValueError
    for a combination that cannot run."""
    precision = settings.precision
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "int8" and (device.type != "cpu" or settings.forward != "onnxruntime"):
        raise ValueError("precision: int8 runs on a CPU with forward: onnxruntime (the archive's int8 export)")
    if device.type == "cpu" and precision not in ("fp32", "int8"):
        if precision == "fp16":
            raise ValueError("precision: fp16 runs on a GPU only; on a CPU use fp32 or bf16 (with forward: torch)")
        if settings.forward != "torch":
            raise ValueError(f"precision: {precision} on a CPU needs forward: torch (ONNX Runtime runs the fp32 "
                             "export)")
    return precision


def select_runtime(
    model: DeepfakeDetector, settings: PipelineSettings, device: torch.device, onnx_file: str | Path | None,
) -> Runtime:
    """ONNX Runtime on a CPU when the settings say ``forward: onnxruntime`` (from ``onnx_file``, the archive's
    export); PyTorch otherwise, and always on a GPU."""
    precision = resolve_precision(settings, device)
    if device.type != "cpu" or settings.forward == "torch":
        if onnx_file is not None and device.type == "cpu":
            raise ValueError(f"an ONNX export ({onnx_file}) was given, but the settings say forward: torch")
        return TorchRuntime(model, device, precision)
    if onnx_file is None:
        raise ValueError("forward: onnxruntime needs the ONNX export of the weights (onnx_file; `make mar` "
                         "packs it into the archive)")
    if precision == "int8" and not Path(onnx_file).exists():
        raise ValueError(f"precision: int8 needs the int8 export of the weights ({onnx_file}): `make mar` packs "
                         "it when the settings say precision: int8")
    return OnnxRuntimeForward(model, onnx_file, torch.get_num_threads(), precision)


class OnnxRuntimeForward:
    """The network's logits computed by ONNX Runtime on the CPU, from an export of the very same weights.

    Under CPU contention (a TorchServe frontend and other workers on the same cores) ONNX Runtime's thread
    pool degrades far less than PyTorch's OpenMP threads. An fp32 ``onnx_file`` is exported from ``model`` when
    it does not exist yet, and the session is only kept if its fake probabilities agree with the eager fp32
    network within ``tolerance`` on a seeded batch. An int8 one (``precision="int8"``, made by
    ``deepfake_ops.quantize``) must exist and must name these weights' ``tensor_fingerprint`` in its metadata:
    its numbers differ from the weights' by design (more on random pixels than on faces: an untrained network
    moved by up to 0.76 on the seeded batch), so they cannot say which weights it came from. Otherwise
    :class:`WeightsMismatchError` is raised and the worker refuses to load (an archive whose export is not its
    weights' must not serve). ``difference`` is the largest probability difference on the seeded batch.
    """

    name = "onnxruntime"

    def __init__(self, model: DeepfakeDetector, onnx_file: str | Path, threads: int, precision: str = "fp32",
                 tolerance: float = 1e-4) -> None:
        import onnxruntime

        self.path = Path(onnx_file)
        self.compute = f"cpu/{precision}"
        if not self.path.exists():
            if precision == "int8":  # quantizing needs calibration crops: `make mar` does it, not a worker
                raise ValueError(f"{self.path} does not exist: an int8 export is made by deepfake_ops.quantize "
                                 "(`make mar` with precision: int8)")
            export_onnx(model, self.path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        # ONNX Runtime's arena grows to the largest batch's activations (rounded up to powers of two) and
        # never gives them back: 0.8 GB of a worker's resident memory after a mixed soak. Without it the
        # activations are malloc'd and freed per run, at no measurable cost here (README, Memory).
        options.enable_cpu_mem_arena = False
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        if precision == "int8":
            self._check_quantized_from(model)
        self.difference = self._check(model, tolerance if precision == "fp32" else None)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        inputs = images.contiguous().numpy()
        (logits,) = self.session.run(None, {self.input_name: inputs})
        return torch.from_numpy(logits)

    def _check_quantized_from(self, model: DeepfakeDetector) -> None:
        recorded = self.session.get_modelmeta().custom_metadata_map.get(FINGERPRINT_KEY)
        if recorded != tensor_fingerprint(model):
            raise WeightsMismatchError(
                f"{self.path} was quantized from other weights (its {FINGERPRINT_KEY} is "
                f"{(recorded or 'missing')[:16]}..., these weights' {tensor_fingerprint(model)[:16]}...): rebuild "
                "the archive with `make mar`")

    def _check(self, model: DeepfakeDetector, tolerance: float | None) -> float:
        size = model.config.input_size
        images = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0)) * 4 - 2
        with torch.inference_mode():
            expected = model.fake_probability(model(images))
        actual = model.fake_probability(self(images))
        difference = float((actual - expected).abs().max())
        if tolerance is not None and not difference <= tolerance:
            raise WeightsMismatchError(
                f"ONNX Runtime's fake probabilities differ from PyTorch's by {difference:.2e} (> {tolerance:.0e}) "
                f"for {self.path}: the export is not these weights'; rebuild the archive with `make mar`, or delete "
                "the file outside an archive so that it is exported again"
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
