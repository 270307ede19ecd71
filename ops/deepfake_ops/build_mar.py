"""Build a self-contained, versioned model archive (``.mar``) into the model store.

    deepfake-build-mar                                          # untrained default, version 1.0
    deepfake-build-mar --weights best.safetensors --version 2.0
    deepfake-build-mar --version 1.1 --set sampling=every_nth:5 --set threshold=0.6
    deepfake-build-mar --version 1.2 --set precision=int8       # also the int8 export, and it serves

(``python -m deepfake_ops.build_mar`` is the same; ``make mar`` calls it.) What goes into an archive is
``deepfake_detector.archive``'s to say; this module gathers the parts: the weights (the untrained seeded
default when none are given), ``config/model-config.yaml`` with the overrides, the ONNX export when the
settings ask for ONNX Runtime, and its int8 quantization (``deepfake_ops.quantize``) when they also ask for
``precision: int8``. Then the archive's own handler runs in a fresh process on a few real inputs and
their answers are added as ``golden.json`` (``deepfake_ops.golden``), which ``deepfake-rollout verify``
replays against the live server; ``--no-golden`` skips that step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from deepfake_detector.archive import (
    DEFAULT_MODEL_NAME,
    HANDLER_FILE,
    INT8_ONNX_FILE,
    ONNX_FILE,
    PACKAGE_DIR,
    WEIGHTS_FILE,
    ArchiveManifest,
    archive_path,
    file_sha256,
    write_archive,
)
from deepfake_detector.config import ModelConfig, PipelineSettings
from deepfake_detector.runtimes import export_onnx
from deepfake_detector.untrained import build_detector
from deepfake_detector.weights import load_weights, read_model_config, save_weights

from .golden import record_golden
from .paths import CONFIG_DIR, MODEL_STORE, REPO
from .quantize import quantize_network

PACKAGE = REPO / "detector" / PACKAGE_DIR
HANDLER = REPO / "handler" / HANDLER_FILE
DEFAULT_SERVING_CONFIG = CONFIG_DIR / "model-config.yaml"
DEFAULT_MODEL_STORE = MODEL_STORE
DEFAULT_SEED = 0


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` for the handler section; the value is parsed as YAML (numbers, booleans, strings)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def build_archive(
    version: str,
    weights: Path | None = None,
    name: str = DEFAULT_MODEL_NAME,
    model_store: Path = DEFAULT_MODEL_STORE,
    serving_config: Path = DEFAULT_SERVING_CONFIG,
    handler_overrides: dict[str, Any] | None = None,
    serving_overrides: dict[str, Any] | None = None,
    seed: int = DEFAULT_SEED,
    golden_requests: bool = False,
) -> Path:
    """Write ``<model_store>/<name>-<version>.mar`` and return its path.

    ``golden_requests`` runs the built archive's handler on the golden inputs and stores the answers in it
    (a few seconds per archive); the archive only appears in the store once they are recorded.
    """
    with tempfile.TemporaryDirectory(prefix="mar-parts-") as temp:
        stage = Path(temp)
        weights_file = stage / WEIGHTS_FILE
        if weights is None:
            save_weights(build_detector(ModelConfig(name=name, init_seed=seed), seed=seed), weights_file)
        else:
            read_model_config(weights)  # refuses files that do not describe themselves
            shutil.copyfile(weights, weights_file)
        model_config = read_model_config(weights_file)

        config = yaml.safe_load(Path(serving_config).read_text()) or {}
        config.update(serving_overrides or {})
        config["handler"] = {**(config.get("handler") or {}), **(handler_overrides or {})}
        settings = PipelineSettings.from_mapping(config["handler"])  # fail at build time, not at load time

        extra_files = []
        if settings.forward == "onnxruntime":
            # Exported at build time so that workers start fast; the handler checks it against PyTorch at load.
            model = load_weights(weights_file).eval()
            extra_files.append(export_onnx(model, stage / ONNX_FILE))
            if settings.precision == "int8":  # beside the fp32 export: the archive's config chooses
                extra_files.append(quantize_network(model, extra_files[0], stage / INT8_ONNX_FILE))
        manifest = ArchiveManifest.new(name, version, file_sha256(weights_file),
                                       json.loads(model_config.to_json()), config["handler"])
        built = write_archive(stage / "built.mar", manifest, HANDLER, PACKAGE, weights_file,
                              yaml.safe_dump(config, sort_keys=False), extra_files)
        if golden_requests:
            record_golden(built)
        target = archive_path(model_store, name, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(built), target)
    return target

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="1.0", help="model version (default 1.0)")
    parser.add_argument("--weights", type=Path,
                        help="safetensors from training; omit for the untrained default")
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help=f"model name (default {DEFAULT_MODEL_NAME})")
    parser.add_argument("--model-store", type=Path, default=DEFAULT_MODEL_STORE)
    parser.add_argument("--serving-config", type=Path, default=DEFAULT_SERVING_CONFIG)
    parser.add_argument("--set", dest="overrides", action="append", default=[], type=parse_override,
                        metavar="KEY=VALUE", help="override a handler setting, e.g. sampling=every_nth:5")
    parser.add_argument("--batch-size", type=int, help="override TorchServe's batchSize for this archive")
    parser.add_argument("--max-batch-delay", type=int, help="override TorchServe's maxBatchDelay (ms)")
    parser.add_argument("--workers", type=int, help="override minWorkers and maxWorkers")
    parser.add_argument("--no-golden", action="store_true",
                        help="skip recording the golden requests (deepfake-rollout verify then cannot check it)")
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
    except (ValueError, OSError, RuntimeError) as error:  # bad settings or weights, a failed golden run
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    if args.weights is None:
        print("note: no --weights given, so this archive carries the UNTRAINED seeded default",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
