"""Hostile and odd request bodies, derived from real photos and a real video, for the hardening tests.

Every case says what the server must answer:

* ``"4xx"``: the body cannot be scored (truncated, corrupted where the format checks a CRC, random
  bytes, empty, a header declaring billions of pixels, an image too small to hold a face, a video with
  no frame or longer than the limits). The answer must be a 4xx with a JSON ``{"error", "detail"}``.
* ``"200"``: odd but legal media the README promises to read (animated GIF, CMYK JPEG, 16-bit PNG,
  palette with transparency, EXIF rotation, a one-frame video, WebP/BMP/TIFF).
* ``"4xx|200"``: bit flips in compressed pixels (PNG's deflate stream, whose CRC Pillow does not
  check, JPEG entropy data, H.264 slices). Decoders conceal such damage by design, so some still
  decode into a picture; either a verdict or a 4xx is correct, a 5xx never is.

Everything is generated in memory from a fixed seed, small (images are downscaled to about 100 px) so
that a thousand requests stay within a couple of minutes of CPU.
"""

from __future__ import annotations

import io
import random
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

BAD = "4xx"
GOOD = "200"
EITHER = "4xx|200"


@dataclass(frozen=True)
class Case:
    """One request body and the class of answer it must get."""

    name: str
    body: bytes
    expect: str

    @property
    def kind(self) -> str:
        return self.name.split("/", 1)[0]


@dataclass(frozen=True)
class Sources:
    """The real media everything is derived from."""

    face_photo: Path
    second_face_photo: Path
    no_face_photo: Path
    face_video: Path


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def small(path: Path, side: int = 112) -> Image.Image:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    rgb.thumbnail((side, side))
    return rgb


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG header (valid CRCs) that declares ``width`` x ``height`` over a tiny IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


def jpeg_declaring(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0/SOF2) rewritten to announce another size."""
    data = bytearray(jpeg)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            data[at + 5 : at + 9] = struct.pack(">HH", height, width)
            return bytes(data)
    raise ValueError("no SOF marker in the JPEG")


def gif_declaring(gif: bytes, width: int, height: int) -> bytes:
    """The GIF with a logical screen (and first image) of another size."""
    data = bytearray(gif)
    data[6:10] = struct.pack("<HH", width, height)
    at = data.find(b"\x2c", 13)  # first image descriptor
    if at >= 0:
        data[at + 5 : at + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    """A BMP header for a 24-bit image of the given size with almost no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    pixels = b"\x00" * 64
    header = b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return header + info + pixels


def webp_declaring(width: int, height: int) -> bytes:
    """An extended WebP (VP8X) whose canvas is ``width`` x ``height`` (at most 16384 each)."""
    canvas = struct.pack("<I", width - 1)[:3] + struct.pack("<I", height - 1)[:3]
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + canvas
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def write_video(frames: list[np.ndarray], fps: float, fourcc: str = "mp4v", suffix: str = ".mp4") -> bytes:
    """Frames (BGR uint8, one size) written with OpenCV into a container's bytes."""
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / f"clip{suffix}")
        height, width = frames[0].shape[:2] if frames else (32, 32)
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
        for frame in frames:
            writer.write(frame)
        writer.release()
        return Path(path).read_bytes() if Path(path).exists() else b""


def flip_bit(data: bytes, rng: random.Random, start: int = 0) -> bytes:
    flipped = bytearray(data)
    position = rng.randrange(start, len(flipped))
    flipped[position] ^= 1 << rng.randrange(8)
    return bytes(flipped)


MAGICS = {
    "png": b"\x89PNG\r\n\x1a\n",
    "jpeg": b"\xff\xd8\xff\xe0",
    "gif": b"GIF89a",
    "webp": b"RIFF\x00\x10\x00\x00WEBP",
    "bmp": b"BM" + b"\x00" * 24,
    "tiff": b"II*\x00",
    "mp4": b"\x00\x00\x00\x18ftypisom",
    "avi": b"RIFF\x00\x10\x00\x00AVI ",
    "mkv": b"\x1a\x45\xdf\xa3",
}


def packaged_sources(media) -> Sources:
    """The real photos and video of ``tests.support.Media``."""
    return Sources(media.astronaut, media.grace_hopper, media.cat, media.face_video)


def malformed_cases(sources: Sources, seed: int = 0) -> list[Case]:
    """At least 1,000 bodies that must be refused with a 4xx, plus tolerant bit flips (see module doc)."""
    rng = random.Random(seed)
    face = small(sources.face_photo)
    png = encode(face, "PNG")
    jpeg = encode(small(sources.second_face_photo), "JPEG", quality=85)
    video = sources.face_video.read_bytes()
    cases: list[Case] = []

    def add(name: str, body: bytes, expect: str = BAD) -> None:
        cases.append(Case(f"{name}/{len(cases)}", body, expect))

    image_end = png.rfind(b"IEND") - 4  # a PNG cut after its last IDAT still holds every pixel
    pixels_start = png.find(b"IDAT") + 4
    for _ in range(340):
        add("truncated/png", png[: rng.randrange(1, image_end)])
    for _ in range(240):
        add("truncated/jpeg", jpeg[: rng.randrange(1, len(jpeg) - 2)])
    for _ in range(24):
        add("truncated/video", video[: rng.randrange(1, len(video) - 1)])
    for _ in range(200):  # signature and header chunks: Pillow checks their CRCs
        add("bitflip/png-header", flip_bit(png[:pixels_start], rng) + png[pixels_start:])
    for _ in range(100):  # compressed pixels: most flips break the deflate stream, a few only change pixels
        add("bitflip/png-pixels", png[:pixels_start] + flip_bit(png[pixels_start:image_end], rng)
            + png[image_end:], EITHER)
    for _ in range(24):
        add("bitflip/jpeg", flip_bit(jpeg, rng, start=2), EITHER)
    for _ in range(3):
        add("bitflip/video", flip_bit(video, rng), EITHER)
    for _ in range(160):
        add("random/bytes", rng.randbytes(rng.randrange(1, 4096)))
    for fmt, magic in MAGICS.items():
        for _ in range(14):
            add(f"random/{fmt}-magic", magic + rng.randbytes(rng.randrange(0, 2048)))
    add("zero/empty", b"")
    for length in (1, 2, 8, 64, 512, 4096, 65536):
        add("zero/nul-bytes", b"\x00" * length)

    gif = encode(face, "GIF")
    for width, height in ((100_000, 100_000), (65_535, 65_535), (20_000, 20_000), (1, 2**31 - 1)):
        add("bomb/png", png_declaring(width, height))
    for width, height in ((65_000, 65_000), (30_000, 30_000), (10_000, 10_000)):
        add("bomb/jpeg", jpeg_declaring(jpeg, width, height))
    add("bomb/gif", gif_declaring(gif, 65_535, 65_535))
    add("bomb/bmp", bmp_declaring(100_000, 100_000))
    add("bomb/webp", webp_declaring(16_384, 16_384))

    for fmt in ("PNG", "JPEG", "GIF"):
        add(f"tiny/1x1-{fmt.lower()}", encode(Image.new("RGB", (1, 1), (200, 150, 120)), fmt))
    add("tiny/10000x10", encode(Image.new("RGB", (10_000, 10), (200, 150, 120)), "PNG"))
    add("tiny/10x10000", encode(Image.new("RGB", (10, 10_000), (200, 150, 120)), "PNG"))

    add("video/no-frames-mp4", write_video([], 25.0))
    add("video/no-frames-avi", write_video([], 25.0, "MJPG", ".avi"))
    tile = np.full((32, 32, 3), 128, np.uint8)
    add("video/too-long", write_video([tile] * 30, 0.02))  # 30 frames at 0.02 fps: 1,500 s
    add("video/too-many-frames", write_video([tile] * 18_100, 30.0))
    return cases


def odd_valid_cases(sources: Sources) -> list[Case]:
    """Legal media in unusual shapes that must be scored (200)."""
    face = small(sources.face_photo, 160)
    cases: list[Case] = []

    def add(name: str, body: bytes) -> None:
        cases.append(Case(f"{name}/{len(cases)}", body, GOOD))

    frames = [face.rotate(angle) for angle in (0, 5, 10)]
    add("odd/animated-gif",
        encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0))
    add("odd/cmyk-jpeg", encode(face.convert("CMYK"), "JPEG", quality=90))
    sixteen = (np.asarray(face.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    add("odd/16-bit-png", encode(Image.fromarray(sixteen), "PNG"))
    add("odd/grayscale-jpeg", encode(face.convert("L"), "JPEG"))
    rgba = face.convert("RGBA")
    rgba.putalpha(200)
    add("odd/rgba-png", encode(rgba, "PNG"))
    add("odd/palette-transparency-png", encode(face.convert("P"), "PNG", transparency=0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    add("odd/exif-rotated-jpeg", encode(face, "JPEG", exif=exif.tobytes()))
    add("odd/webp", encode(face, "WEBP"))
    add("odd/bmp", encode(face, "BMP"))
    add("odd/tiff", encode(face, "TIFF"))
    add("odd/no-face-png", encode(small(sources.no_face_photo), "PNG"))
    bgr = cv2.cvtColor(np.asarray(face), cv2.COLOR_RGB2BGR)
    add("odd/one-frame-video", write_video([bgr], 25.0))
    return cases


def valid_cases(sources: Sources) -> list[Case]:
    """Ordinary requests: real face photos (small), a photo without a face and the real face video."""
    return [
        Case("valid/face-jpeg", encode(small(sources.face_photo), "JPEG", quality=90), GOOD),
        Case("valid/second-face-jpeg", encode(small(sources.second_face_photo), "JPEG", quality=90), GOOD),
        Case("valid/no-face-png", encode(small(sources.no_face_photo), "PNG"), GOOD),
        Case("valid/face-video", sources.face_video.read_bytes(), GOOD),
    ]


def interleave(bad: list[Case], good: list[Case], every: int, seed: int = 0) -> Iterator[Case]:
    """The bad cases in a shuffled order with a good one after every ``every`` of them."""
    order = list(bad)
    random.Random(seed).shuffle(order)
    for position, case in enumerate(order):
        yield case
        if position % every == every - 1:
            yield good[(position // every) % len(good)]
