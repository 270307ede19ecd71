"""Start, wait for, and stop the detector's TorchServe, isolated in its own run folder (``make serve``).

    deepfake-server start             # default archive on 127.0.0.1:8080/8081/8082, waits for READY
    deepfake-server stop              # stops it and waits until no process is left
    deepfake-server status
    deepfake-server start --restore   # restart with the versions and default of the last snapshot

The run folder (default ``.run/``) holds the rendered ``config.properties``, TorchServe's ``key_file.json``
(the API tokens), ``logs/`` and its own temp folder (``deepfake_ops.torchserve``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deepfake_detector.archive import DEFAULT_MODEL_NAME, archive_file_name

from .packaged import ASTRONAUT, MissingPackageFile
from .paths import MODEL_STORE, RUN_DIR
from .torchserve import ServerError, TorchServeInstance


def sample_face_photo() -> Path | None:
    """A real face photo shipped by scikit-image (public domain), for the printed example."""
    try:
        return ASTRONAUT.locate()
    except MissingPackageFile:
        return None


def example_curl(instance: TorchServeInstance, model: str, media: Path | None) -> str:
    token = instance.keys()["inference"]
    target = media or Path("face.jpg")
    return (f'curl -s -H "Authorization: Bearer {token}" -H "Content-Type: application/octet-stream" '
            f'--data-binary @{target} {instance.inference_url}/predictions/{model}')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR)
    parser.add_argument("--model-store", type=Path, default=MODEL_STORE)
    parser.add_argument("--archive", action="append", default=None,
                        help="archive file name in the model store to load at start (repeatable)")
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--ports", type=int, nargs=3, default=(8080, 8081, 8082),
                        metavar=("INFERENCE", "MANAGEMENT", "METRICS"))
    parser.add_argument("--restore", action="store_true",
                        help="start: bring back the versions and defaults of the run folder's last snapshot")
    args = parser.parse_args(argv)
    instance = TorchServeInstance(args.run_dir, args.model_store, *args.ports)

    try:
        if args.command == "stop":
            was_running = instance.pid() is not None
            instance.stop()
            print("stopped" if was_running else f"no server running from {args.run_dir}")
            return 0
        if args.command == "status":
            if instance.pid() is None:
                print(f"no server running from {args.run_dir}")
                return 1
            print(json.dumps(instance.describe(args.model), indent=2))
            return 0
        archives = args.archive or [archive_file_name(args.model, "1.0")]
        missing = [a for a in archives if not (args.model_store / a).exists()]
        if missing and not args.restore:
            print(f"error: {missing} not in {args.model_store}; build it with `make mar`", file=sys.stderr)
            return 1
        instance.start(archives, snapshot=True, restore=args.restore)
        print(f"TorchServe starting from {args.run_dir} ...", flush=True)
        instance.wait_ready(args.model)
    except ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.model} is READY at {instance.inference_url}. Tokens are in {instance.key_file}.\n")
    print("Score a real face photo:\n")
    print("  " + example_curl(instance, args.model, sample_face_photo()) + "\n")
    print("TorchServe's keys expire after 60 minutes (renew: POST /token with the API key in the key file); "
          "`make serve GATEWAY=1` puts the gateway in front, whose client keys do not expire.")
    print("Stop with: make stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
