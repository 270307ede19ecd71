"""What a built archive carries: safetensors weights only, loadable with every pickle entry point disabled."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from deepfake_detector import load_weights
from deepfake_detector.archive import WEIGHTS_FILE, archive_path

from tests.support import MODEL_NAME


def test_weights_load_without_pickle(
    monkeypatch: pytest.MonkeyPatch, model_store: Path, tmp_path: Path
) -> None:
    """The archive holds safetensors only, and loading it works with every pickle entry point disabled."""
    with zipfile.ZipFile(archive_path(model_store, MODEL_NAME, "1.0")) as archive:
        names = archive.namelist()
        archive.extract(WEIGHTS_FILE, tmp_path)
    assert WEIGHTS_FILE in names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt"))], names

    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("pickle was used to load weights")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    model = load_weights(tmp_path / WEIGHTS_FILE)
    assert sum(p.numel() for p in model.parameters()) > 1_000_000
