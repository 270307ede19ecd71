"""The model archive's format, in one place: what a ``.mar`` holds, its manifest, writing, reading, verifying.

A version of the detector is one self-contained ``NAME-VERSION.mar`` (a zip written by
torch-model-archiver)::

    torchserve_handler.py     the TorchServe adapter (the archive's entry point)
    deepfake_detector/        this package, the code the version runs
    weights.safetensors       the tensors, with their ModelConfig in the metadata (no pickle)
    network.onnx              the ONNX Runtime export of the same weights (when ``forward: onnxruntime``)
    network.int8.onnx         its int8 quantization (when also ``precision: int8``)
    model-config.yaml         TorchServe's batching settings and the ``handler:`` PipelineSettings
    archive_manifest.json     :class:`ArchiveManifest`: name, version, creation time, weights sha256, ...
    golden.json               the golden requests recorded at build time (see deepfake_ops.golden)
    MAR-INF/MANIFEST.json     torch-model-archiver's own manifest

The builder (``deepfake_ops.build_mar``), the handler, rollout and the golden requests all name these files
through this module. It uses the standard library only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

DEFAULT_MODEL_NAME = "deepfake_detector"
"""The model's name when none is given: the archive's file name, TorchServe's ``/predictions/NAME``."""

HANDLER_FILE = "torchserve_handler.py"
PACKAGE_DIR = "deepfake_detector"
WEIGHTS_FILE = "weights.safetensors"
ONNX_FILE = "network.onnx"
INT8_ONNX_FILE = "network.int8.onnx"
SERVING_CONFIG_FILE = "model-config.yaml"
MANIFEST_FILE = "archive_manifest.json"
GOLDEN_FILE = "golden.json"
MAR_MANIFEST_FILE = "MAR-INF/MANIFEST.json"


class ArchiveError(ValueError):
    """An archive that is not one of ours, is incomplete, or whose contents do not match its manifest."""


def onnx_file_name(precision: str) -> str:
    """The ONNX export an archive's ``forward: onnxruntime`` runs in ``precision``."""
    return INT8_ONNX_FILE if precision == "int8" else ONNX_FILE


def archive_file_name(name: str, version: str) -> str:
    """Archives of one model differ by file name, so several versions can sit in one model store."""
    return f"{name}-{version}.mar"


def archive_path(model_store: str | Path, name: str, version: str) -> Path:
    return Path(model_store) / archive_file_name(name, version)


def sha256_of(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return sha256_of(handle)


@dataclass(frozen=True)
class ArchiveManifest:
    """``archive_manifest.json``: what the archive is, written at build time and checked before serving."""

    name: str
    version: str
    created: str
    weights_sha256: str
    trained: bool
    init_seed: int | None
    model_config: dict[str, Any]
    handler_settings: dict[str, Any]
    weights_file: str = WEIGHTS_FILE

    @classmethod
    def new(cls, name: str, version: str, weights_sha256: str, model_config: dict[str, Any],
            handler_settings: dict[str, Any]) -> ArchiveManifest:
        trained = bool(model_config.get("trained"))
        return cls(name, str(version), dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   weights_sha256, trained, None if trained else model_config.get("init_seed"), model_config,
                   handler_settings)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = MANIFEST_FILE) -> ArchiveManifest:
        try:
            data = json.loads(text)
            known = {field.name for field in dataclasses.fields(cls)}
            manifest = cls(**{key: value for key, value in data.items() if key in known})
        except (json.JSONDecodeError, TypeError, AttributeError) as error:
            raise ArchiveError(f"{where} is not an archive manifest ({error})") from None
        texts = (manifest.name, manifest.weights_sha256, manifest.weights_file)
        if not all(isinstance(value, str) for value in texts) or not isinstance(manifest.version, (str, int, float)):
            raise ArchiveError(f"{where} is not an archive manifest (name, version, weights_sha256 and "
                               "weights_file must be strings)")
        return dataclasses.replace(manifest, version=str(manifest.version))

    def check_weights(self, weights_sha256: str, where: str) -> None:
        """Refuse weights whose sha256 differs from the one recorded at build time."""
        if weights_sha256 != self.weights_sha256:
            raise ArchiveError(
                f"{where}: {self.weights_file} has sha256 {weights_sha256[:16]}..., the archive manifest says "
                f"{self.weights_sha256[:16]}...: the archive was altered or corrupted; rebuild it with "
                f"`make mar VERSION={self.version}`"
            )


# ----------------------------------------------------------------------------------- an unpacked archive


def verify_unpacked(model_dir: str | Path) -> ArchiveManifest | None:
    """Check an unpacked archive's weights against its manifest (what a worker does before loading).

    Returns the manifest, or None for a folder without one (built by hand: nothing to check against).
    """
    manifest_path = Path(model_dir) / MANIFEST_FILE
    if not manifest_path.exists():
        return None
    manifest = ArchiveManifest.from_json(manifest_path.read_text(), str(manifest_path))
    weights = Path(model_dir) / manifest.weights_file
    if not weights.exists():
        raise ArchiveError(f"{model_dir} holds no {manifest.weights_file}, which its manifest names: the archive "
                           "is incomplete; rebuild it with `make mar`")
    manifest.check_weights(file_sha256(weights), str(model_dir))
    return manifest


# ------------------------------------------------------------------------------------------- a .mar file


class Archive:
    """A ``.mar`` on disk: read its parts, verify it, add its golden requests."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _opened(self) -> Iterator[zipfile.ZipFile]:
        """The archive as a zip; a missing or foreign file is an ArchiveError that says so."""
        try:
            with zipfile.ZipFile(self.path) as mar:
                yield mar
        except FileNotFoundError:
            raise ArchiveError(f"no archive {self.path}") from None
        except (zipfile.BadZipFile, KeyError) as error:
            raise ArchiveError(f"{self.path.name} is not an archive built by `make mar` ({error})") from None

    def _read(self, member: str) -> bytes:
        with self._opened() as mar:
            return mar.read(member)

    def _read_json(self, member: str, optional: bool = False) -> Any:
        """A JSON member; None for a missing ``optional`` one."""
        with self._opened() as mar:
            if optional and member not in mar.namelist():
                return None
            text = mar.read(member)
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ArchiveError(f"{self.path.name}: {member} is not JSON ({error}); rebuild it with `make mar`"
                               ) from None

    def members(self) -> list[str]:
        with self._opened() as mar:
            return mar.namelist()

    def manifest(self) -> ArchiveManifest:
        return ArchiveManifest.from_json(self._read(MANIFEST_FILE), f"{self.path.name}:{MANIFEST_FILE}")

    def mar_manifest(self) -> dict[str, Any]:
        """torch-model-archiver's ``model`` section: modelName, modelVersion, handler, serializedFile, ..."""
        manifest = self._read_json(MAR_MANIFEST_FILE)
        model = manifest.get("model") if isinstance(manifest, dict) else None
        if not isinstance(model, dict):
            raise ArchiveError(f"{self.path.name}: {MAR_MANIFEST_FILE} has no model section; rebuild it with "
                               "`make mar`")
        return model

    def golden(self) -> dict[str, Any] | None:
        """The recorded golden requests, or None for an archive built without them."""
        golden = self._read_json(GOLDEN_FILE, optional=True)
        if golden is None:
            return None
        if not isinstance(golden, dict) or not isinstance(golden.get("requests"), list):
            raise ArchiveError(f"{self.path.name}: {GOLDEN_FILE} holds no list of requests; rebuild it with "
                               "`make mar`")
        return golden

    def weights_sha256(self, weights_file: str = WEIGHTS_FILE) -> str:
        with self._opened() as mar:
            if weights_file not in mar.namelist():
                raise ArchiveError(f"{self.path.name} holds no {weights_file}: rebuild it with `make mar`")
            with mar.open(weights_file) as weights:
                return sha256_of(weights)

    def verify(self, name: str, version: str) -> ArchiveManifest:
        """Refuse an archive whose weights are not the ones its manifest names, or that is another version."""
        if not self.path.exists():
            raise ArchiveError(f"no archive {self.path}: build it with `make mar VERSION={version}`")
        manifest = self.manifest()
        manifest.check_weights(self.weights_sha256(manifest.weights_file), self.path.name)
        mar = self.mar_manifest()
        names = {manifest.name, str(mar.get("modelName"))}
        versions = {manifest.version, str(mar.get("modelVersion"))}
        if names != {name} or versions != {version}:
            raise ArchiveError(f"{self.path.name} describes model {sorted(names)} version {sorted(versions)}, "
                               f"not {name} {version}; rebuild it with `make mar VERSION={version}`")
        return manifest

    def add_golden(self, golden: dict[str, Any]) -> None:
        if GOLDEN_FILE in self.members():
            raise ArchiveError(f"{self.path.name} already holds {GOLDEN_FILE}")
        with zipfile.ZipFile(self.path, "a", compression=zipfile.ZIP_DEFLATED) as mar:
            mar.writestr(GOLDEN_FILE, json.dumps(golden, indent=1))

    def extract(self, folder: str | Path) -> Path:
        with self._opened() as mar:
            mar.extractall(folder)
        return Path(folder)


# --------------------------------------------------------------------------------------------- writing


def write_archive(
    target: str | Path, manifest: ArchiveManifest, handler: Path, package: Path, weights: Path,
    serving_config: str, extra_files: Iterable[Path] = (),
) -> Path:
    """Pack the parts into ``target`` with torch-model-archiver; returns ``target``.

    ``serving_config`` is the text of ``model-config.yaml``; ``extra_files`` (the ONNX export) land at the
    archive's root beside the manifest.
    """
    target = Path(target)
    with tempfile.TemporaryDirectory(prefix="mar-") as temp:
        stage = Path(temp)
        (stage / MANIFEST_FILE).write_text(manifest.to_json())
        (stage / SERVING_CONFIG_FILE).write_text(serving_config)
        shutil.copyfile(weights, stage / manifest.weights_file)
        code = stage / "code"
        shutil.copytree(package, code / PACKAGE_DIR, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        export = stage / "export"
        export.mkdir()
        command = [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", manifest.name,
            "--version", manifest.version,
            "--handler", str(handler),
            "--serialized-file", str(stage / manifest.weights_file),
            "--extra-files", ",".join(str(path) for path in (code, stage / MANIFEST_FILE, *extra_files)),
            "--config-file", str(stage / SERVING_CONFIG_FILE),
            "--export-path", str(export),
            "--force",
        ]
        subprocess.run(command, check=True, capture_output=True, text=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(export / f"{manifest.name}.mar"), target)
    return target
