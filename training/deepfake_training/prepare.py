"""Face crops from a dataset of videos and images, cut exactly as the server cuts them.

Two layouts are recognised:

* FaceForensics++: ``original_sequences/<origin>/<compression>/videos/NNN.mp4`` (REAL) and
  ``manipulated_sequences/<method>/<compression>/videos/NNN_MMM.mp4`` (FAKE). A fake's group is its target
  video ``NNN``, so a real video and the fakes made on it always land in the same split.
* A generic tree with ``real/`` and ``fake/``: the group of a file is the first name below ``real/`` or
  ``fake/`` without its suffix, so ``real/0042.mp4`` and ``fake/0042.mp4`` (or a folder ``real/person_a/``)
  stay together.

Frames are decoded by ``deepfake_detector.media.decode_media`` (every ``frame_stride``-th frame, exactly:
``every_nth`` sampling; past ``max_frames`` thinned evenly over the whole video), faces are
found by ``deepfake_detector.faces.FaceDetector`` with the serving settings, and crops are cut by
``deepfake_detector.transforms.face_region`` / ``center_region`` / ``crop_and_resize``: the pixels a model
is trained on are the pixels it will be served.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from deepfake_detector.config import DEFAULT_FACE_MARGIN, PipelineSettings
from deepfake_detector.errors import InputError
from deepfake_detector.faces import FaceDetector, check_searchable
from deepfake_detector.media import decode_media
from deepfake_detector.transforms import center_region, crop_and_resize, face_region
from tqdm import tqdm

from .index import SPLITS, CropGeometry, CropRow, append_rows, read_index, split_for_group

MEDIA_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
INDEX_FILE = "index.csv"
DONE_FILE = "sources_done.txt"
"""Sources fully processed (also those without a face), one per line: what a resumed run skips."""


@dataclass(frozen=True)
class Source:
    """A media file of the dataset with its label and group."""

    path: Path
    relative: str
    label: str
    group: str


@dataclass(frozen=True)
class PrepareOptions:
    frame_stride: int = 10
    """Video: crop every Nth frame."""
    max_frames: int = 32
    """Video: at most this many frames per source, spread evenly over its whole length."""
    crop_size: int = 224
    """Side of the saved crops; use the model's input size (training refuses a mismatch)."""
    face_margin: float = DEFAULT_FACE_MARGIN
    """Crop side = face box side x (1 + margin); recorded in ``crops.json`` and, by training, in the weights."""
    faces_per_frame: int = 1
    """The most confident faces kept per frame."""
    no_face: str = "skip"
    """``skip`` frames without a face, or ``center``: keep the server's centre-crop fallback."""
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    split_overrides: tuple[tuple[str, str], ...] = ()
    """(group, split) pairs that replace the hashed split, e.g. to hold out chosen sources."""

    def split_of(self, group: str) -> str:
        overrides = dict(self.split_overrides)
        if group in overrides:
            return overrides[group]
        return split_for_group(group, self.val_fraction, self.test_fraction, self.seed)


def discover(root: str | Path) -> list[Source]:
    """The dataset's media files, labelled and grouped by the layout's rules (module docstring)."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
    sources = []
    for path in files:
        relative = path.relative_to(root)
        parts = relative.parts
        if "original_sequences" in parts or "manipulated_sequences" in parts:
            label = "REAL" if "original_sequences" in parts else "FAKE"
            group = re.split(r"[_.]", path.stem)[0]
        elif parts[0].lower() in ("real", "fake") and len(parts) >= 2:
            label = parts[0].upper()
            group = Path(parts[1]).stem
        else:
            continue
        sources.append(Source(path, relative.as_posix(), label, group))
    if not sources:
        raise ValueError(
            f"no media found under {root}: expected FaceForensics++ folders (original_sequences/, "
            "manipulated_sequences/) or real/ and fake/ folders holding videos or images"
        )
    return sources


def frames_of(source: Source, options: PrepareOptions) -> tuple[list[np.ndarray], list[int]]:
    """RGB frames and their indices, decoded by the server's own decoder (videos: every Nth frame)."""
    settings = PipelineSettings(
        sampling=f"every_nth:{options.frame_stride}", max_frames=options.max_frames, max_decode_per_sample=10**9,
        max_bytes=1 << 40, max_video_frames=10**9, max_video_seconds=1e9,
    )
    media = decode_media(source.path.read_bytes(), settings, functools.partial(check_searchable, settings))
    return media.frames, media.frame_indices


def crops_of_frame(
    frame: np.ndarray, faces: list, settings: PipelineSettings, options: PrepareOptions
) -> Iterator[tuple[int, np.ndarray, tuple[float, float, float, float]]]:
    """(face number, crop, face box in crop pixels) for each kept face, or the centre crop when allowed."""
    height, width = frame.shape[:2]
    if not faces:
        if options.no_face == "center":
            region = center_region(width, height)
            side = region[2] - region[0]
            inset = 0.15 * options.crop_size
            box = (inset, inset, options.crop_size - inset, options.crop_size - inset) if side else (0, 0, 0, 0)
            yield -1, crop_and_resize(frame, region, options.crop_size), box
        return
    for number, face in enumerate(faces[: options.faces_per_frame]):
        region = face_region(face.box, width, height, options.face_margin)
        scale = options.crop_size / (region[2] - region[0])
        x1, y1, x2, y2 = face.box
        box = ((x1 - region[0]) * scale, (y1 - region[1]) * scale, (x2 - region[0]) * scale, (y2 - region[1]) * scale)
        yield number, crop_and_resize(frame, region, options.crop_size), box


def prepare(
    root: str | Path, output: str | Path, options: PrepareOptions | None = None,
    settings: PipelineSettings | None = None, device: str = "cpu",
) -> Path:
    """Crop every source under ``root`` into ``output``; sources already in the index are skipped."""
    options = options or PrepareOptions()
    for group, split in options.split_overrides:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} for group {group!r} is not one of {SPLITS}")
    settings = settings or PipelineSettings()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    CropGeometry(options.face_margin, crop_size=options.crop_size).save(output)
    index_path = output / INDEX_FILE
    done_path = output / DONE_FILE
    done = set(done_path.read_text().splitlines()) if done_path.exists() else set()
    if index_path.exists():
        _drop_unfinished_rows(index_path, done)
    sources = [s for s in discover(root) if s.relative not in done]
    detector = FaceDetector(settings, device)
    skipped: list[str] = []
    progress = tqdm(sources, desc="sources", unit="file")
    for source in progress:
        progress.set_postfix_str(source.relative[-40:])
        split = options.split_of(source.group)
        try:
            frames, indices = frames_of(source, options)
        except InputError as error:
            skipped.append(f"{source.relative}: {error.detail}")
            continue
        rows = []
        for start in range(0, len(frames), 32):
            chunk = frames[start : start + 32]
            for frame, index, found in zip(chunk, indices[start : start + 32], detector.detect(chunk)):
                faces = found.faces
                for number, crop, box in crops_of_frame(frame, faces, settings, options):
                    name = f"crops/{source.label.lower()}/{_safe(source.relative)}/{index:06d}_{max(number, 0)}.png"
                    (output / name).parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(output / name), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
                    rows.append(CropRow(source.relative, source.group, index, number, source.label, split, name, *box))
        append_rows(index_path, rows)
        with open(done_path, "a") as handle:
            handle.write(source.relative + "\n")
    if skipped:
        print(f"skipped {len(skipped)} undecodable source(s):\n  " + "\n  ".join(skipped))
    return index_path


def _safe(relative: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", relative)


def _drop_unfinished_rows(index_path: Path, done: set[str]) -> None:
    """Rows of a source that a killed run appended without marking it done: it is cropped again."""
    rows = read_index(index_path)
    kept = [row for row in rows if row.source in done]
    if len(kept) != len(rows):
        index_path.unlink()
        append_rows(index_path, kept)
