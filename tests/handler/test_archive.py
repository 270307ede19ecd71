"""The archive format: what a built ``.mar`` holds, its manifest, and the checks before it is served."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest
from deepfake_detector import archive
from deepfake_detector.archive import Archive, ArchiveError, ArchiveManifest, archive_path
from deepfake_detector.weights import read_model_config
from deepfake_ops import archive_handler

from tests.support import MODEL_NAME
from tests.support.archives import flip_last_byte, rewrite_archive


def test_a_built_archive_holds_the_documented_layout(rollout_store: Path) -> None:
    mar = Archive(archive_path(rollout_store, MODEL_NAME, "1.0"))
    members = set(mar.members())
    for name in (archive.HANDLER_FILE, archive.WEIGHTS_FILE, archive.ONNX_FILE, archive.SERVING_CONFIG_FILE,
                 archive.MANIFEST_FILE, archive.GOLDEN_FILE, archive.MAR_MANIFEST_FILE):
        assert name in members, name
    package = {name for name in members if name.startswith(f"{archive.PACKAGE_DIR}/")}
    assert f"{archive.PACKAGE_DIR}/verdict.py" in package and f"{archive.PACKAGE_DIR}/archive.py" in package
    assert not [name for name in members if "__pycache__" in name or name.endswith(".pyc")]
    manifest = mar.manifest()
    assert (manifest.name, manifest.version, manifest.weights_file) == (MODEL_NAME, "1.0", archive.WEIGHTS_FILE)
    assert manifest.weights_sha256 == mar.weights_sha256()
    assert manifest.trained is False and manifest.init_seed == manifest.model_config["init_seed"]
    assert mar.mar_manifest()["modelVersion"] == "1.0"
    assert ArchiveManifest.from_json(manifest.to_json()) == manifest
    assert mar.verify(MODEL_NAME, "1.0") == manifest


def test_the_crop_margin_travels_with_the_weights(rollout_store: Path, tmp_path: Path) -> None:
    mar = Archive(archive_path(rollout_store, MODEL_NAME, "1.0"))
    unpacked = mar.extract(tmp_path)
    config = read_model_config(unpacked / archive.WEIGHTS_FILE)
    assert (config.face_margin, config.crop_filter) == (0.3, "area")
    assert "face_margin" not in mar.manifest().handler_settings
    assert mar.manifest().model_config["face_margin"] == 0.3


def test_verification_refuses_altered_weights_and_other_versions(rollout_store: Path, tmp_path: Path) -> None:
    source = archive_path(rollout_store, MODEL_NAME, "1.0")
    with pytest.raises(ArchiveError, match="altered or corrupted"):
        Archive(archive_path(rollout_store, MODEL_NAME, "4.0")).verify(MODEL_NAME, "4.0")
    with pytest.raises(ArchiveError, match="version"):
        Archive(source).verify(MODEL_NAME, "9.9")
    with pytest.raises(ArchiveError, match="no archive"):
        Archive(tmp_path / "missing.mar").verify(MODEL_NAME, "1.0")
    (tmp_path / "junk.mar").write_bytes(b"not a zip")
    with pytest.raises(ArchiveError, match="not an archive"):
        Archive(tmp_path / "junk.mar").manifest()

    unpacked = Archive(source).extract(tmp_path / "unpacked")
    assert archive.verify_unpacked(unpacked) == Archive(source).manifest()
    weights = unpacked / archive.WEIGHTS_FILE
    weights.write_bytes(flip_last_byte(weights.read_bytes()))
    with pytest.raises(ArchiveError, match="sha256"):
        archive.verify_unpacked(unpacked)
    (unpacked / archive.MANIFEST_FILE).unlink()
    assert archive.verify_unpacked(unpacked) is None


def test_golden_requests_are_added_once(rollout_store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.mar"
    shutil.copyfile(archive_path(rollout_store, MODEL_NAME, "1.0"), copy)
    with pytest.raises(ArchiveError, match="already holds"):
        Archive(copy).add_golden({"format": 1})
    renamed = rewrite_archive(copy, tmp_path / "renamed.mar", "5.0")
    assert Archive(renamed).golden()["model_version"] == "5.0"


def test_the_standalone_archive_handler_names_the_archive_files_alike() -> None:
    """archive_handler may not import deepfake_detector (the archive's own copy must load), so it spells two
    names itself: they must be the format's."""
    assert (archive_handler.HANDLER_FILE, archive_handler.MAR_MANIFEST_FILE) == (archive.HANDLER_FILE,
                                                                               archive.MAR_MANIFEST_FILE)


def test_a_foreign_or_incomplete_archive_is_an_archive_error(rollout_store: Path, tmp_path: Path) -> None:
    """Whatever is wrong inside, the caller gets one ArchiveError that says what (never a KeyError or a
    TypeError from deep inside zipfile or json)."""
    real = Archive(archive_path(rollout_store, MODEL_NAME, "1.0")).manifest()
    tiny = dataclasses.replace(real, weights_sha256=hashlib.sha256(b"w").hexdigest()).to_json()
    numbers = ('{"name": 1, "version": 1, "created": "", "weights_sha256": 2, "trained": false, "init_seed": 0, '
               '"model_config": {}, "handler_settings": {}}')
    cases = {  # members, the call that must refuse, what the refusal names
        "no model section": ({archive.MAR_MANIFEST_FILE: "[]"}, "mar_manifest", "no model section"),
        "no model name": ({archive.MANIFEST_FILE: tiny, archive.WEIGHTS_FILE: "w",
                           archive.MAR_MANIFEST_FILE: '{"model": {"modelVersion": "1.0"}}'}, "verify", "describes"),
        "no weights": ({archive.MANIFEST_FILE: tiny}, "verify", "holds no"),
        "manifest of numbers": ({archive.MANIFEST_FILE: numbers}, "manifest", "must be strings"),
        "golden not a list": ({archive.GOLDEN_FILE: '{"requests": 3}'}, "golden", "no list of requests"),
        "golden not JSON": ({archive.GOLDEN_FILE: "{"}, "golden", "not JSON"),
    }
    for name, (members, call, says) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.mar"
        with zipfile.ZipFile(path, "w") as mar:
            for member, text in members.items():
                mar.writestr(member, text)
        mar_file = Archive(path)
        with pytest.raises(ArchiveError, match=says):
            mar_file.verify(MODEL_NAME, "1.0") if call == "verify" else getattr(mar_file, call)()
