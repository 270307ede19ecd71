"""The index of prepared face crops: one CSV row per crop, with the split decided per source group.

A group is the unit that must never straddle two splits: a video (all its frames), or a folder of files
that belong together. The split of a group depends on nothing but its name and the seed (a hash), so it
stays the same when a preparation is resumed or when more sources are added later.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from deepfake_detector.config import DEFAULT_CROP_FILTER, DEFAULT_FACE_MARGIN

SPLITS = ("train", "val", "test")
LABELS = ("REAL", "FAKE")


@dataclass(frozen=True)
class CropRow:
    """One face crop: where it came from, its label and split, and the face box inside the crop."""

    source: str
    """Path of the source file relative to the dataset root."""
    group: str
    """Sources of one group share a split (a video, or files that belong together)."""
    frame: int
    face: int
    """0 for the most confident face of the frame, 1 for the next, ...; -1 for a centre crop (no face)."""
    label: str
    split: str
    crop: str
    """Path of the PNG crop relative to the index's folder."""
    face_x1: float
    face_y1: float
    face_x2: float
    face_y2: float
    """The detected face box in the crop's pixels (the blending mask is drawn inside it)."""

    @property
    def target(self) -> int:
        """1 for FAKE, 0 for REAL."""
        return int(self.label == "FAKE")

    @property
    def face_box(self) -> tuple[float, float, float, float]:
        return self.face_x1, self.face_y1, self.face_x2, self.face_y2


COLUMNS = tuple(f.name for f in fields(CropRow))


def split_for_group(group: str, val_fraction: float, test_fraction: float, seed: int = 0) -> str:
    """train, val or test for a group, from a hash of its name: stable across runs and additions."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < test_fraction:
        return "test"
    if position < test_fraction + val_fraction:
        return "val"
    return "train"


def read_index(path: str | Path) -> list[CropRow]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path} is not a crop index: columns {sorted(missing)} are missing")
        rows = []
        for record in reader:
            rows.append(CropRow(
                source=record["source"], group=record["group"], frame=int(record["frame"]),
                face=int(record["face"]), label=record["label"], split=record["split"], crop=record["crop"],
                face_x1=float(record["face_x1"]), face_y1=float(record["face_y1"]),
                face_x2=float(record["face_x2"]), face_y2=float(record["face_y2"]),
            ))
    check_rows(rows)
    return rows


def check_rows(rows: Sequence[CropRow]) -> None:
    """Refuse unknown labels or splits, and any group that appears in two splits (a leak)."""
    split_of: dict[str, str] = {}
    for row in rows:
        if row.label not in LABELS:
            raise ValueError(f"unknown label {row.label!r} for {row.crop}; use one of {LABELS}")
        if row.split not in SPLITS:
            raise ValueError(f"unknown split {row.split!r} for {row.crop}; use one of {SPLITS}")
        seen = split_of.setdefault(row.group, row.split)
        if seen != row.split:
            raise ValueError(f"group {row.group!r} is in both {seen} and {row.split}: frames would leak")


def append_rows(path: str | Path, rows: Iterable[CropRow]) -> None:
    """Append rows (writing the header first if the file is new): one source at a time, so runs resume."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for row in rows:
            record = asdict(row)
            for key in ("face_x1", "face_y1", "face_x2", "face_y2"):
                record[key] = round(record[key], 2)
            writer.writerow(record)


def data_fingerprint(rows: Sequence[CropRow], root: str | Path) -> str:
    """sha256 over every row and the bytes of every crop: two trainings on equal data share it."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.crop):
        digest.update("|".join(str(v) for v in asdict(row).values()).encode())
        digest.update(hashlib.sha256((Path(root) / row.crop).read_bytes()).digest())
    return digest.hexdigest()


GEOMETRY_FILE = "crops.json"


@dataclass(frozen=True)
class CropGeometry:
    """How the crops of an index were cut; training writes it into the weights' ModelConfig, so the server
    cuts faces exactly so (``crops.json`` beside the index)."""

    face_margin: float = DEFAULT_FACE_MARGIN
    crop_filter: str = DEFAULT_CROP_FILTER
    crop_size: int = 224

    def save(self, folder: Path) -> None:
        """Record the geometry; a folder prepared with another one is refused (its crops would mix)."""
        path = Path(folder) / GEOMETRY_FILE
        if path.exists() and CropGeometry.load(folder) != self:
            raise ValueError(f"{folder} holds crops cut as {CropGeometry.load(folder)}, not {self}: prepare "
                             "into a new folder")
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, folder: Path) -> CropGeometry:
        """The recorded geometry; an older folder without one was cut with the defaults."""
        path = Path(folder) / GEOMETRY_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else cls()
