"""Build a self-contained, versioned model archive (``.mar``) into the model store.

    python scripts/build_mar.py                                   # untrained default, version 1.0
    python scripts/build_mar.py --weights best.safetensors --version 2.0
    python scripts/build_mar.py --version 1.1 --set frame_stride=5 --set threshold=0.6

The archive holds the handler, the ``deepfake_detector`` package it runs, the weights (safetensors, with
their ModelConfig inside), ``model-config.yaml`` (TorchServe's batching settings and the handler's
pipeline settings) and ``archive_manifest.json`` (version, creation time, weights sha256, trained or not).
Then the archive's own handler runs in-process on a few real inputs and their answers are added as
``golden.json`` (see ``golden.py``), which ``rollout.py verify`` replays against the live server;
``--no-golden`` skips that step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from deepfake_detector import (
    ModelConfig,
    PipelineSettings,
    build_detector,
    file_sha256,
    load_weights,
    read_model_config,
    save_weights,
)
from deepfake_detector.network import export_onnx
from golden import record_golden

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIR = REPO / "handler" / "deepfake_detector"
HANDLER_FILE = REPO / "handler" / "torchserve_handler.py"
DEFAULT_SERVING_CONFIG = REPO / "config" / "model-config.yaml"
DEFAULT_MODEL_STORE = REPO / "model_store"
DEFAULT_NAME = "deepfake_detector"
DEFAULT_SEED = 0
WEIGHTS_FILE = "weights.safetensors"
ONNX_FILE = "network.onnx"
ARCHIVE_MANIFEST = "archive_manifest.json"


def archive_path(model_store: Path, name: str, version: str) -> Path:
    """Archives of one model differ by file name, so several versions can sit in one store."""
    return Path(model_store) / f"{name}-{version}.mar"


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` for the handler section; the value is parsed as YAML (numbers, booleans, strings)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def build_archive(
    version: str,
    weights: Path | None = None,
    name: str = DEFAULT_NAME,
    model_store: Path = DEFAULT_MODEL_STORE,
    serving_config: Path = DEFAULT_SERVING_CONFIG,
    handler_overrides: dict[str, Any] | None = None,
    serving_overrides: dict[str, Any] | None = None,
    seed: int = DEFAULT_SEED,
    golden_requests: bool = False,
) -> Path:
    """Write ``<model_store>/<name>-<version>.mar`` and return its path.

    ``golden_requests`` runs the built archive's handler on the golden inputs and stores the answers in it
    (a few seconds per archive).
    """
    model_store = Path(model_store)
    model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mar-") as temp:
        stage = Path(temp)
        weights_file = stage / WEIGHTS_FILE
        if weights is None:
            model = build_detector(ModelConfig(name=name, init_seed=seed), seed=seed)
            sha256 = save_weights(model, weights_file)
        else:
            read_model_config(weights)  # refuses files that do not describe themselves
            shutil.copyfile(weights, weights_file)
            sha256 = file_sha256(weights_file)
        model_config = read_model_config(weights_file)

        config = yaml.safe_load(Path(serving_config).read_text()) or {}
        config.update(serving_overrides or {})
        config["handler"] = {**(config.get("handler") or {}), **(handler_overrides or {})}
        PipelineSettings.from_mapping(config["handler"])  # fail at build time, not at load time
        (stage / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

        manifest = {
            "name": name,
            "version": version,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": sha256,
            "trained": model_config.trained,
            "init_seed": model_config.init_seed if not model_config.trained else None,
            "model_config": json.loads(model_config.to_json()),
            "handler_settings": config["handler"],
        }
        (stage / ARCHIVE_MANIFEST).write_text(json.dumps(manifest, indent=2))

        extra_files = [stage / ARCHIVE_MANIFEST]
        if config["handler"].get("forward") == "onnxruntime":
            # Exported at build time so that workers start fast; the handler checks it against PyTorch at load.
            extra_files.append(export_onnx(load_weights(weights_file).eval(), stage / ONNX_FILE))

        code = stage / "code"
        shutil.copytree(PACKAGE_DIR, code / PACKAGE_DIR.name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        export = stage / "export"
        export.mkdir()
        command = [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", name,
            "--version", version,
            "--handler", str(HANDLER_FILE),
            "--serialized-file", str(weights_file),
            "--extra-files", ",".join(str(path) for path in (code, *extra_files)),
            "--config-file", str(stage / "model-config.yaml"),
            "--export-path", str(export),
            "--force",
        ]
        subprocess.run(command, check=True, capture_output=True, text=True)
        target = archive_path(model_store, name, version)
        built = export / f"{name}.mar"
        if golden_requests:
            record_golden(built)
        shutil.move(str(built), target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="1.0", help="model version (default 1.0)")
    parser.add_argument("--weights", type=Path,
                        help="safetensors from training; omit for the untrained default")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"model name (default {DEFAULT_NAME})")
    parser.add_argument("--model-store", type=Path, default=DEFAULT_MODEL_STORE)
    parser.add_argument("--serving-config", type=Path, default=DEFAULT_SERVING_CONFIG)
    parser.add_argument("--set", dest="overrides", action="append", default=[], type=parse_override,
                        metavar="KEY=VALUE", help="override a handler setting, e.g. frame_stride=5")
    parser.add_argument("--batch-size", type=int, help="override TorchServe's batchSize for this archive")
    parser.add_argument("--max-batch-delay", type=int, help="override TorchServe's maxBatchDelay (ms)")
    parser.add_argument("--workers", type=int, help="override minWorkers and maxWorkers")
    parser.add_argument("--no-golden", action="store_true",
                        help="skip recording the golden requests (rollout.py verify then cannot check it)")
    args = parser.parse_args(argv)

    serving: dict[str, Any] = {}
    if args.batch_size is not None:
        serving["batchSize"] = args.batch_size
    if args.max_batch_delay is not None:
        serving["maxBatchDelay"] = args.max_batch_delay
    if args.workers is not None:
        serving["minWorkers"] = serving["maxWorkers"] = args.workers
    try:
        path = build_archive(
            args.version, args.weights, args.name, args.model_store, args.serving_config,
            dict(args.overrides), serving, golden_requests=not args.no_golden,
        )
    except subprocess.CalledProcessError as error:
        print(f"torch-model-archiver failed:\n{error.stderr}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    if args.weights is None:
        print("note: no --weights given, so this archive carries the UNTRAINED seeded default",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
