"""MTCNN's three stages, arranged for speed, with facenet-pytorch's networks, weights, thresholds and boxes.

facenet-pytorch's ``detect_face`` spends most of a CPU's time outside the networks' arithmetic: an area
resize per pyramid level and one per candidate window (PyTorch's adaptive average pooling, slow for
fractional factors and called a hundred times a photo), PReLU and max-pooling kernels, layout copies between
stages. :class:`Mtcnn` computes the same numbers another way:

* **Area resampling from a summed-area table** (:class:`AreaSampler`): an area resize is the mean of each
  output pixel's source rectangle (adaptive average pooling's bins), so every pyramid level and every
  candidate window of a batch is four gathers per output pixel from one table of the batch's running sums,
  however large the rectangle, normalised in the same pass. The sums are exact integers; the means differ
  from PyTorch's float32 accumulation by rounding only.
* **The networks on OpenVINO** on a CPU (:class:`OpenVinoNetworks`, compiled from the bundled weights in
  memory when the detector loads, fp32), or on PyTorch (:class:`TorchNetworks`, channels_last; always on a
  GPU, and on a CPU with ``detect_runtime: torch``).
* Pixels stay NHWC from the frame to the networks; the box arithmetic between the stages is
  facenet-pytorch's own functions, in its order.

``tests/unit/test_runtime_parity.py`` holds the boxes to ``MTCNN.detect``'s within 0.5 px and the
probabilities within 1e-4 on the photos and video frames the tests and the benchmark use (measured: 6.1e-5 px
and 1.2e-7).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from facenet_pytorch import MTCNN
from facenet_pytorch.models.utils.detect_face import batched_nms_numpy, bbreg, generateBoundingBox, pad, rerec
from torch import nn
from torchvision.ops.boxes import batched_nms

FrameDetections = tuple[list[np.ndarray | None], list[np.ndarray | None]]
"""Per frame: an (N, 4) array of boxes and N probabilities, or None and None when nothing was found."""


def _bin_edges(length: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and end (exclusive) of the ``size`` source bins adaptive average pooling averages over a
    ``length``-long axis: floor(i * length / size) to ceil((i + 1) * length / size)."""
    index = torch.arange(size, device=device)
    return (index * length) // size, ((index + 1) * length + size - 1) // size


class AreaSampler:
    """Area resizes of a batch of uint8 NHWC frames, and of rectangles in them, from one summed-area table.

    ``table[n, y, x]`` is the sum of frame ``n``'s pixels above row ``y`` and left of column ``x``: exact in
    int32 for frames of up to 8.4 million pixels (a detection copy is at most 2.1 million), in int64 beyond.
    Corners are gathered with ``index_select`` (contiguous copies; PyTorch's advanced indexing costs several
    times more). Results are float32 NHWC.
    """

    def __init__(self, frames: torch.Tensor) -> None:
        count, height, width, channels = frames.shape
        wide = height * width * 255 >= 2**31
        if frames.device.type == "cpu":  # NumPy's running sums are twice as fast as PyTorch's here
            table = np.zeros((count, height + 1, width + 1, channels), dtype=np.int64 if wide else np.int32)
            inner = table[:, 1:, 1:]
            np.cumsum(frames.numpy(), axis=2, dtype=table.dtype, out=inner)
            np.cumsum(inner, axis=1, out=inner)
            self.table = torch.from_numpy(table)
        else:
            dtype = torch.int64 if wide else torch.int32
            self.table = torch.zeros((count, height + 1, width + 1, channels), dtype=dtype, device=frames.device)
            self.table[:, 1:, 1:] = frames.to(dtype).cumsum(2).cumsum(1)
        self.height, self.width, self.channels = height, width, channels

    def resize(self, height: int, width: int, gain: float = 1.0, offset: float = 0.0) -> torch.Tensor:
        """Every frame area-resized to (height, width): ``interpolate(mode="area")``'s numbers, times ``gain``
        plus ``offset`` (a normalisation, in the same pass)."""
        device = self.table.device
        top, bottom = _bin_edges(self.height, height, device)
        left, right = _bin_edges(self.width, width, device)
        rows = self.table.index_select(1, bottom) - self.table.index_select(1, top)
        sums = rows.index_select(2, right) - rows.index_select(2, left)
        area = ((bottom - top)[:, None] * (right - left)[None, :])[None, :, :, None]
        return _scaled_means(sums, area, gain, offset)

    def windows(self, frame_of_window: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor, left: torch.Tensor,
                right: torch.Tensor, size: int, gain: float = 1.0, offset: float = 0.0) -> torch.Tensor:
        """Each window ``[top, bottom) x [left, right)`` of its frame area-resized to size x size, (K, S, S, C),
        times ``gain`` plus ``offset``.

        The same numbers as cropping each window and resizing it alone, in one gather for all of them.
        """
        index = torch.arange(size, device=top.device)
        heights, widths = (bottom - top)[:, None], (right - left)[:, None]
        row_start = top[:, None] + (index * heights) // size
        row_end = top[:, None] + ((index + 1) * heights + size - 1) // size
        col_start = left[:, None] + (index * widths) // size
        col_end = left[:, None] + ((index + 1) * widths + size - 1) // size
        stride = self.width + 1
        first = (frame_of_window * (self.height + 1))[:, None]
        flat = self.table.view(-1, self.channels)
        shape = (len(top), size, size, self.channels)

        def corner(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            index = ((first + rows) * stride)[:, :, None] + cols[:, None, :]
            return flat.index_select(0, index.reshape(-1)).view(shape)

        sums = (corner(row_end, col_end) - corner(row_end, col_start)) - (
            corner(row_start, col_end) - corner(row_start, col_start))
        area = ((row_end - row_start)[:, :, None] * (col_end - col_start)[:, None, :])[..., None]
        return _scaled_means(sums, area, gain, offset)


def _scaled_means(sums: torch.Tensor, area: torch.Tensor, gain: float, offset: float) -> torch.Tensor:
    """``sums / area * gain + offset`` in float32, in one pass over the pixels."""
    return torch.addcmul(torch.tensor(offset, device=sums.device), sums.float(), gain / area.float())


class Networks(Protocol):
    """MTCNN's three networks on normalised NHWC float32 pixels, with facenet-pytorch's outputs (NCHW)."""

    name: str

    def pnet(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def rnet(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def onet(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class TorchNetworks:
    """facenet-pytorch's modules, fed channels_last views of the NHWC pixels (no copy)."""

    name = "torch"

    def __init__(self, mtcnn: MTCNN) -> None:
        self.mtcnn = mtcnn

    def pnet(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mtcnn.pnet(pixels.permute(0, 3, 1, 2))

    def rnet(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mtcnn.rnet(pixels.permute(0, 3, 1, 2))

    def onet(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        regression, _landmarks, probabilities = self.mtcnn.onet(pixels.permute(0, 3, 1, 2))
        return regression, probabilities


class _FromNhwc(nn.Module):
    """A facenet-pytorch network taking normalised NHWC pixels and returning (regression, probability)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.network(pixels.permute(0, 3, 1, 2))
        return outputs[0], outputs[-1]


class OpenVinoNetworks:
    """The three networks compiled by OpenVINO for this CPU, in fp32, from ``mtcnn``'s weights in memory.

    OpenVINO fuses each PReLU and the layout change into the convolutions and pools, in blocked layouts:
    about 1.5-2x PyTorch's speed on these small networks, and ONNX Runtime's (whose PReLU kernel alone takes
    half of PNet's time). ``INFERENCE_PRECISION_HINT: f32`` keeps the arithmetic in fp32 on CPUs where OpenVINO
    would choose bf16. Compiling takes a few seconds, once per worker. One inference request per network: a
    request per input shape (pyramid levels, batch sizes) was no faster and held 0.7 GB more after a few
    photo sizes.
    """

    name = "openvino"

    def __init__(self, mtcnn: MTCNN, threads: int) -> None:
        import openvino

        core = openvino.Core()
        config = {"INFERENCE_NUM_THREADS": max(1, threads), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}
        self.requests = {}
        for name, size in (("pnet", 12), ("rnet", 24), ("onet", 48)):
            shape = [-1, -1, -1, 3] if name == "pnet" else [-1, size, size, 3]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = openvino.convert_model(_FromNhwc(getattr(mtcnn, name)).eval(),
                                               example_input=torch.zeros(1, size, size, 3), input=[shape])
            self.requests[name] = core.compile_model(model, "CPU", config).create_infer_request()

    def _run(self, name: str, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.requests[name].infer([pixels.numpy()])  # copied out of the request's buffers
        return torch.from_numpy(outputs[0]), torch.from_numpy(outputs[1])

    def pnet(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run("pnet", pixels)

    def rnet(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run("rnet", pixels)

    def onet(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run("onet", pixels)


NORMALISATION = {"gain": 0.0078125, "offset": -127.5 * 0.0078125}
"""MTCNN's input scale, facenet-pytorch's ``(pixels - 127.5) * 0.0078125``, as a gain and an offset."""


class Mtcnn:
    """facenet-pytorch's MTCNN detection (``MTCNN.detect``'s boxes and probabilities) on batches of frames."""

    def __init__(self, mtcnn: MTCNN, networks: Networks) -> None:
        self.device = mtcnn.device
        self.min_face_size = mtcnn.min_face_size
        self.factor = mtcnn.factor
        self.thresholds = mtcnn.thresholds
        self.networks = networks

    @classmethod
    def create(cls, mtcnn: MTCNN, networks: str, threads: int) -> Mtcnn:
        """``networks``: ``openvino`` (CPU only) or ``torch``."""
        if networks == "openvino" and mtcnn.device.type == "cpu":
            return cls(mtcnn, OpenVinoNetworks(mtcnn, threads))
        return cls(mtcnn, TorchNetworks(mtcnn))

    def scales(self, height: int, width: int) -> list[float]:
        """The pyramid: from the scale that makes ``min_face_size`` 12 px, by ``factor``, while >= 12 px."""
        scale = 12.0 / self.min_face_size
        shortest = min(height, width) * scale
        scales = []
        while shortest >= 12:
            scales.append(scale)
            scale *= self.factor
            shortest *= self.factor
        return scales

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Each network once (the first call of each is the slow one)."""
        for run, size in ((self.networks.pnet, 12), (self.networks.rnet, 24), (self.networks.onet, 48)):
            run(torch.zeros(2, size, size, 3, device=self.device))

    @torch.inference_mode()
    def detect(self, batch: np.ndarray) -> FrameDetections:
        """Faces in a batch of same-sized uint8 RGB frames (N, H, W, 3), per frame."""
        count, height, width = batch.shape[:3]
        frames = torch.from_numpy(np.require(batch, requirements="W")).to(self.device)
        sampler = AreaSampler(frames)
        boxes, frame_of_box = self._proposals(sampler, height, width)
        if len(boxes):
            boxes, frame_of_box = self._refine(sampler, boxes, frame_of_box, height, width)
        if len(boxes):
            boxes, frame_of_box = self._output(sampler, boxes, frame_of_box, height, width)
        return _per_frame(boxes, frame_of_box, count)

    def _proposals(self, sampler: AreaSampler, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage one: PNet over every pyramid level, NMS per level and overall, regressed, squared (none when
        the frame is too small for a single level)."""
        boxes_per_scale = [torch.empty((0, 9), device=self.device)]
        frames_per_scale = [torch.empty(0, dtype=torch.int64, device=self.device)]
        for scale in self.scales(height, width):
            level = sampler.resize(int(height * scale + 1), int(width * scale + 1), **NORMALISATION)
            regression, probabilities = self.networks.pnet(level)
            boxes, frame_of_box = generateBoundingBox(regression, probabilities[:, 1], scale, self.thresholds[0])
            keep = batched_nms(boxes[:, :4], boxes[:, 4], frame_of_box, 0.5)
            boxes_per_scale.append(boxes[keep])
            frames_per_scale.append(frame_of_box[keep])
        boxes = torch.cat(boxes_per_scale)
        frame_of_box = torch.cat(frames_per_scale)
        keep = batched_nms(boxes[:, :4], boxes[:, 4], frame_of_box, 0.7)
        boxes, frame_of_box = boxes[keep], frame_of_box[keep]
        box_width = boxes[:, 2] - boxes[:, 0]
        box_height = boxes[:, 3] - boxes[:, 1]
        boxes = torch.stack([
            boxes[:, 0] + boxes[:, 5] * box_width, boxes[:, 1] + boxes[:, 6] * box_height,
            boxes[:, 2] + boxes[:, 7] * box_width, boxes[:, 3] + boxes[:, 8] * box_height, boxes[:, 4],
        ], dim=1)
        return rerec(boxes), frame_of_box

    def _refine(self, sampler: AreaSampler, boxes: torch.Tensor, frame_of_box: torch.Tensor, height: int,
                width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage two: RNet on 24 px windows, its threshold, NMS, regression, squared."""
        boxes, frame_of_box, regression = self._passed(sampler, boxes, frame_of_box, height, width, 24,
                                                       self.networks.rnet, self.thresholds[1])
        keep = batched_nms(boxes[:, :4], boxes[:, 4], frame_of_box, 0.7)
        return rerec(bbreg(boxes[keep], regression[keep])), frame_of_box[keep]

    def _output(self, sampler: AreaSampler, boxes: torch.Tensor, frame_of_box: torch.Tensor, height: int,
                width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage three: ONet on 48 px windows, its threshold, regression, NMS by the smaller box."""
        boxes, frame_of_box, regression = self._passed(sampler, boxes, frame_of_box, height, width, 48,
                                                       self.networks.onet, self.thresholds[2])
        boxes = bbreg(boxes, regression)
        keep = batched_nms_numpy(boxes[:, :4], boxes[:, 4], frame_of_box, 0.7, "Min")
        return boxes[keep], frame_of_box[keep]

    @staticmethod
    def _passed(sampler: AreaSampler, boxes: torch.Tensor, frame_of_box: torch.Tensor, height: int, width: int,
                size: int, network: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], threshold: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The candidates ``network`` scores above ``threshold`` on their size x size windows: boxes with that
        probability as a fifth column, their frames, and the network's regression."""
        windows, boxes, frame_of_box = _windows(sampler, boxes, frame_of_box, height, width, size)
        regression, probabilities = _in_chunks(network, windows)
        passed = probabilities[:, 1] > threshold
        boxes = torch.cat((boxes[passed, :4], probabilities[passed, 1:2]), dim=1)
        return boxes, frame_of_box[passed], regression[passed]


WINDOWS_PER_CALL = 256
"""Candidate windows per call of RNet or ONet: a frame full of texture yields thousands, and OpenVINO keeps its
buffers for the largest batch it has run (0.2 GB more after four noisy 1080p frames in one call); this bounds
those buffers (the windows themselves are still resampled all at once)."""


def _in_chunks(network: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], windows: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``network`` on ``windows`` in chunks of at most :data:`WINDOWS_PER_CALL`, outputs concatenated (empty ones
    for no window: every candidate may lie outside its frame)."""
    if not len(windows):
        return (torch.empty((0, 4), device=windows.device), torch.empty((0, 2), device=windows.device))
    if len(windows) <= WINDOWS_PER_CALL:
        return network(windows)
    outputs = [network(windows[start:start + WINDOWS_PER_CALL]) for start in range(0, len(windows), WINDOWS_PER_CALL)]
    return torch.cat([regression for regression, _ in outputs]), torch.cat([probability for _, probability in outputs])


def _windows(sampler: AreaSampler, boxes: torch.Tensor, frame_of_box: torch.Tensor, height: int, width: int,
             size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each candidate's box clipped to its frame (facenet-pytorch's ``pad``) and resampled to size x size;
    candidates left with no pixel are dropped, as facenet-pytorch drops them."""
    top, bottom, left, right = pad(boxes, width, height)
    top, left = top - 1, left - 1
    kept = np.flatnonzero((bottom > top) & (right > left))
    top, bottom, left, right, selection = (torch.as_tensor(edges[kept], dtype=torch.int64, device=boxes.device)
                                           for edges in (top, bottom, left, right, np.arange(len(top))))
    windows = sampler.windows(frame_of_box[selection], top, bottom, left, right, size, **NORMALISATION)
    return windows, boxes[selection], frame_of_box[selection]


def _per_frame(boxes: torch.Tensor, frame_of_box: torch.Tensor, count: int) -> FrameDetections:
    found = boxes.cpu().numpy()
    frame_of_found = frame_of_box.cpu().numpy()
    all_boxes: list[np.ndarray | None] = []
    all_probabilities: list[np.ndarray | None] = []
    for frame in range(count):
        mine = found[frame_of_found == frame]
        all_boxes.append(mine[:, :4].copy() if len(mine) else None)
        all_probabilities.append(mine[:, 4].copy() if len(mine) else None)
    return all_boxes, all_probabilities
