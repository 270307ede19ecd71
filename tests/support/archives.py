"""Helpers shared by the rollout tests: archives with golden requests, altered archives, the CLIs, a data set.

The session's model store (conftest) holds archives built without golden requests, which keeps the
other tests' archive builds short. Rollout tests need them: ``golden_store`` copies versions 1.0 and 2.0
and records their golden requests once per test session (the same step ``make mar`` runs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from deepfake_detector.archive import GOLDEN_FILE, MANIFEST_FILE, MAR_MANIFEST_FILE, Archive, archive_path
from deepfake_ops.golden import record_golden
from deepfake_ops.paths import REPO

from . import MODEL_NAME

_golden_stores: dict[Path, Path] = {}


def golden_store(model_store: Path, scratch: Path) -> Path:
    """A model store with versions 1.0 and 2.0 of ``model_store`` carrying golden requests (made once)."""
    if model_store not in _golden_stores:
        store = scratch / "golden_store"
        store.mkdir(parents=True, exist_ok=True)
        for version in ("1.0", "2.0"):
            target = archive_path(store, MODEL_NAME, version)
            shutil.copyfile(model_store / target.name, target)
            if Archive(target).golden() is None:
                record_golden(target)
        _golden_stores[model_store] = store
    return _golden_stores[model_store]


def link_archive(source: Path, store: Path) -> Path:
    """Put an archive in another store without copying its 68 MB (a hard link when possible)."""
    target = store / source.name
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def rewrite_archive(
    source: Path, target: Path, version: str, edits: dict[str, Callable[[bytes], bytes]] | None = None,
) -> Path:
    """A copy of an archive that calls itself ``version`` everywhere, with some members altered by ``edits``.

    Used to make the kinds of broken archive the rollout must catch (altered weights, altered golden
    answers) while everything else about them is consistent.
    """
    edits = edits or {}

    def reversion(name: str, data: bytes) -> bytes:
        if name == MAR_MANIFEST_FILE:
            manifest = json.loads(data)
            manifest["model"]["modelVersion"] = version
            return json.dumps(manifest).encode()
        if name == MANIFEST_FILE:
            return json.dumps(json.loads(data) | {"version": version}).encode()
        if name == GOLDEN_FILE:
            golden = json.loads(data)
            golden["model_version"] = version
            for request in golden["requests"]:
                if "model" in request["response"]:
                    request["response"]["model"]["version"] = version
            return json.dumps(golden).encode()
        return data

    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as copy:
        for member in original.infolist():
            data = reversion(member.filename, original.read(member))
            if member.filename in edits:
                data = edits[member.filename](data)
            copy.writestr(member, data)
    return target


def flip_last_byte(data: bytes) -> bytes:
    """Alter one byte of tensor data at the end of a safetensors file: still loadable, different weights."""
    return data[:-1] + bytes([data[-1] ^ 0x01])


def shift_golden_probability(delta: float) -> Callable[[bytes], bytes]:
    """Move the recorded fake probability of the first golden request (an astronaut photo) by ``delta``."""

    def edit(data: bytes) -> bytes:
        golden = json.loads(data)
        response = golden["requests"][0]["response"]
        response["fake_probability"] += delta
        return json.dumps(golden).encode()

    return edit


def run_command(module: str, *args: str, env: dict[str, str] | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run one of the operator commands (``python -m deepfake_ops.MODULE``) as a user would, capturing its output."""
    result = subprocess.run([sys.executable, "-m", f"deepfake_ops.{module}", *args], capture_output=True,
                            text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)
    print(f"$ deepfake_ops.{module} {' '.join(args)} -> rc {result.returncode}\n{result.stdout}{result.stderr}")
    return result


def make_labelled_set(root: Path, photos: dict[str, Path], faces: dict[str, list[float]]) -> Path:
    """``real/`` = the face photos (and ``extra_real``), ``fake/`` = the same photos with a visible edit.

    Two manipulations with OpenCV: the face region blurred beyond recognition, and the face of one photo
    pasted over the face of the other (a crude face swap).
    """
    (root / "real").mkdir(parents=True, exist_ok=True)
    (root / "fake").mkdir(parents=True, exist_ok=True)
    images = {name: cv2.imread(str(path), cv2.IMREAD_COLOR) for name, path in photos.items()}
    for path in photos.values():
        shutil.copyfile(path, root / "real" / path.name)
    names = list(faces)
    for name in names:
        image = images[name].copy()
        x0, y0, x1, y1 = _box(faces[name], image)
        image[y0:y1, x0:x1] = cv2.GaussianBlur(image[y0:y1, x0:x1], (0, 0), 12)
        cv2.imwrite(str(root / "fake" / f"{name}_face_blurred.png"), image)
    for target, donor in zip(names, names[1:] + names[:1], strict=True):
        image = images[target].copy()
        x0, y0, x1, y1 = _box(faces[target], image)
        dx0, dy0, dx1, dy1 = _box(faces[donor], images[donor])
        face = cv2.resize(images[donor][dy0:dy1, dx0:dx1], (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        mask = np.full(face.shape[:2], 255, dtype=np.uint8)
        centre = ((x0 + x1) // 2, (y0 + y1) // 2)
        swapped = cv2.seamlessClone(face, image, mask.copy(), centre, cv2.NORMAL_CLONE)
        cv2.imwrite(str(root / "fake" / f"{target}_face_of_{donor}.jpg"), swapped)
    return root


def _box(box: list[float], image: np.ndarray) -> tuple[int, int, int, int]:
    height, width = image.shape[:2]
    x0, y0, x1, y1 = (round(v) for v in box)
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)
