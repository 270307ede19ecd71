"""The two kinds of settings, each with one home.

``ModelConfig`` describes a set of weights: architecture, input size, normalisation, class order, and how
the crops it was trained on were cut (margin around the face, resize filter). It is stored inside the
weights file (safetensors metadata), so it can never be separated from them.

``PipelineSettings`` describe how one deployment serves those weights: sampling of video frames, face
detection, decision threshold, batching of crops and input limits. They live in the ``handler:`` section
of the archive's ``model-config.yaml``, so two versions can serve the same weights differently.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .archive import DEFAULT_MODEL_NAME
from .errors import InputError
from .sampling import DEFAULT_VALUES, Sampling, parse_sampling
from .verdict import AGGREGATIONS, Aggregation

DEFAULT_FACE_MARGIN = 0.3
DEFAULT_CROP_FILTER = "area"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Forward = Literal["torch", "onnxruntime"]
DetectRuntime = Literal["torch", "openvino"]
Precision = Literal["auto", "fp32", "fp16", "bf16", "int8"]
CropFilter = Literal["area", "linear"]
WEIGHTS_OWNED = {
    "face_margin": "the crop margin the weights were trained with",
}
"""Keys that once were serving settings and now travel with the weights (ModelConfig)."""


def _from_mapping(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build a dataclass from a mapping, refusing keys it does not know (a typo must not pass silently)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; known keys: {sorted(known)}")
    return cls(**values)


def _check_field_types(settings: Any) -> None:
    """Refuse a value of the wrong kind (a YAML string, a boolean, a fraction where a count belongs) with a
    sentence, before any comparison trips over it; ints are accepted where floats belong."""
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        wanted = {"int": (int,), "float": (int, float)}.get(str(field.type), (str,))
        if isinstance(value, bool) or not isinstance(value, wanted):
            kind = {"int": "a whole number", "float": "a number"}.get(str(field.type), "a string")
            raise ValueError(f"{field.name} must be {kind}, got {value!r} ({type(value).__name__})")


@dataclass(frozen=True)
class ModelConfig:
    """What a set of weights is: architecture, expected input and the meaning of each output."""

    name: str = DEFAULT_MODEL_NAME
    backbone: str = "efficientnet_b4"
    hidden_size: int = 512
    feature_dropout: float = 0.5
    hidden_dropout: float = 0.3
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: tuple[str, ...] = ("REAL", "FAKE")
    temperature: float = 1.0
    face_margin: float = DEFAULT_FACE_MARGIN
    """Crops are squares of side ``face box side x (1 + face_margin)``: what the weights were trained on."""
    crop_filter: CropFilter = DEFAULT_CROP_FILTER
    """How crops are resized to ``input_size``: ``area`` (area filter shrinking, bilinear enlarging) or
    ``linear`` (bilinear always)."""
    trained: bool = False
    init_seed: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if sorted(self.class_names) != ["FAKE", "REAL"]:
            raise ValueError(f"class_names must be REAL and FAKE in some order, got {self.class_names}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.face_margin < 0:
            raise ValueError(f"face_margin must not be negative, got {self.face_margin}")
        if self.crop_filter not in ("area", "linear"):
            raise ValueError(f"crop_filter must be area or linear, got {self.crop_filter!r}")

    @property
    def fake_index(self) -> int:
        """Index of the FAKE logit in the network's output."""
        return self.class_names.index("FAKE")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return _from_mapping(cls, json.loads(text), "model config")


@dataclass(frozen=True)
class PipelineSettings:
    """How a deployment turns media into verdicts. Every field can be set in ``model-config.yaml``."""

    threshold: float = 0.5
    """A fake probability at or above this is reported as FAKE."""
    sampling: str = f"uniform:{DEFAULT_VALUES['uniform']}"
    """Video: which frames are scored (``sampling``): ``uniform:N`` (N frames spread over the whole video),
    ``every_seconds:S`` or ``every_nth:K``; a request may choose another with the ``X-Deepfake-Sampling``
    header or a ``sampling`` form field."""
    max_frames: int = 64
    """Video: at most this many sampled frames, whatever the policy asks; more are thinned evenly over the
    video, never cut at its end. It bounds a video's cost."""
    max_decode_per_sample: int = 24
    """Video: when the samples would take more decoded frames than this on average (each counted from where the
    decoder is, or from the keyframe before it), a sample dearer than this moves to a cheap frame near it
    (``sampling``); the answer gives the times actually scored."""
    max_decoded_frames: int = 3000
    """Video: decoding stops after this many decoded frames (a bound on a video's decoding time, whatever its
    keyframes: about 5 s of 720p on 2 cores); samples not reached by then are left out, and the answer's coverage
    counts them (``samples_left_out``)."""
    aggregation: Aggregation = "tracks"
    """Video: ``tracks``: as fake as its most-fake person (``verdict.track_score``: the highest level a person's
    score holds over ``min_track_frames`` consecutive samples of them); ``mean``, ``max``, ``median``: of the
    sampled frames' scores."""
    min_track_frames: int = 2
    """Video, ``tracks``: a person decides by this many consecutive samples of them (one stray frame does not
    flip a video), and a face seen in fewer sampled frames (a stray detection) decides only if no track is
    that long."""
    detect_max_side: int = 1920
    """The longest side of the copy faces are searched on is at most this: a bound on detection's cost for
    very wide frames (a panorama), which then are searched from larger faces."""
    min_face_size: int = 24
    """Smallest face searched for, in pixels of the copy searched: MTCNN's reliable size. The first search's
    copy is scaled so that the smallest face worth scoring (below) is this size in it, so in frame pixels the
    first search starts at the larger of this and ``min_face_fraction``; the second look starts at this size
    of its own copy (24 px of a frame up to 1920x1080, 48 px of a 4K frame)."""
    min_face_fraction: float = 0.0625
    """...and faces smaller than this share of the frame's shorter side (1/16) are not searched for by the
    first search: the copy is then at most 384 px on its shorter side (24 x 16), so a 4K frame costs what a
    1080p one costs, and the pyramid starts at the smallest face worth scoring."""
    min_face_probability: float = 0.9
    """Detections below this MTCNN probability are ignored."""
    max_faces_per_frame: int = 32
    """The most confident faces of a frame that are scored, a bound that a real group photo does not reach;
    the answer says how many were left out when it is reached. The frame scores as its most-fake face."""
    second_look_max_pixels: int = 1920 * 1080
    """A frame in which the first search finds no face is searched again on a larger copy (the frame itself
    when it has at most this many pixels), from ``min_face_size`` px of that copy, before its centre is
    scored; 0: no second look."""
    detect_runtime: DetectRuntime = "torch"
    """Which runtime computes MTCNN's three networks on a CPU: PyTorch, or OpenVINO (compiled from the same
    weights when the worker loads; faster, facenet-pytorch's boxes held to 0.5 px and measured within 1e-4 px).
    GPUs always use PyTorch. The resampling and box arithmetic around them are the same either way
    (``mtcnn.Mtcnn``)."""
    max_crops_per_forward: int = 16
    """Upper bound on crops in one forward pass, whatever the number of requests in a batch."""
    forward: Forward = "torch"
    """Which runtime computes the network on CPU: PyTorch, or ONNX Runtime on an export of the same weights
    (about twice as fast here; refused at load unless within 1e-4 of PyTorch). GPUs always use PyTorch."""
    precision: Precision = "auto"
    """The backbone's precision with PyTorch: ``fp16`` or ``bf16`` run it under autocast, ``fp32`` (true fp32:
    no TF32 on a GPU) not; ``auto`` is fp16 on a GPU and fp32 on a CPU. The head always runs in fp32
    (``runtimes.TorchRuntime``). On a CPU: fp32, bf16 with ``forward: torch``, or int8 with ``forward:
    onnxruntime`` (the archive's statically quantized export, ``deepfake_ops.quantize``; opt-in: the README's
    int8 table says what it costs in quality)."""
    cpu_threads: int = 0
    """Intra-op threads of PyTorch, ONNX Runtime and OpenCV, on every device; 0 lets the handler divide the
    CPUs the container may use (its CPU quota, else the cores it may run on) among the workers."""
    keep_freed_mb: int = 0
    """glibc: buffers below this many MB come from the heap, and up to this much freed memory is kept for the
    next request instead of being faulted in again page by page (``cpu_tuning.keep_freed_memory``; a 4K JPEG
    decodes in 13 ms instead of 21); 0: glibc's defaults. Off by default: 256 held 0.4 GB more per worker in
    the memory soak for no served throughput that stood out of the noise (README, Memory)."""
    max_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    max_video_frames: int = 18_000
    """Videos whose container announces more frames than this are refused before decoding."""
    max_video_seconds: float = 600.0
    max_frame_pixels: int = 3840 * 2160

    def __post_init__(self) -> None:
        _check_field_types(self)
        if not 0.0 <= self.min_face_fraction < 1.0:
            raise ValueError(f"min_face_fraction must lie in [0, 1), got {self.min_face_fraction}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1, got {self.threshold}")
        if self.forward not in ("torch", "onnxruntime"):
            raise ValueError(f"forward must be torch or onnxruntime, got {self.forward!r}")
        if self.detect_runtime not in get_args(DetectRuntime):
            raise ValueError(f"detect_runtime must be torch or openvino, got {self.detect_runtime!r}")
        if self.precision not in get_args(Precision):
            raise ValueError(f"precision must be one of {', '.join(get_args(Precision))}, got {self.precision!r}")
        if self.precision == "int8" and self.forward != "onnxruntime":
            raise ValueError("precision: int8 runs with forward: onnxruntime (the archive's int8 export)")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        for name in ("max_frames", "max_decode_per_sample", "max_decoded_frames", "min_track_frames", "detect_max_side",
                     "max_faces_per_frame", "max_crops_per_forward", "min_face_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.second_look_max_pixels < 0:
            raise ValueError(f"second_look_max_pixels must not be negative, got {self.second_look_max_pixels}")
        try:
            parse_sampling(self.sampling)
        except InputError as error:  # a bad default fails at load, with the reason
            raise ValueError(f"sampling: {error.detail}") from error

    @classmethod
    def from_mapping(cls, values: dict[str, Any] | None) -> PipelineSettings:
        values = dict(values or {})
        owned = sorted(set(values) & set(WEIGHTS_OWNED))
        if owned:
            raise ValueError(
                f"{owned[0]} is {WEIGHTS_OWNED[owned[0]]}: it is part of the weights' ModelConfig, not a "
                "serving setting; remove it from the handler settings (set it when training)"
            )
        return _from_mapping(cls, values, "handler settings")

    @property
    def default_sampling(self) -> Sampling:
        """The archive's sampling, for the requests that choose none."""
        return parse_sampling(self.sampling)

    def replace(self, **changes: Any) -> PipelineSettings:
        return dataclasses.replace(self, **changes)

