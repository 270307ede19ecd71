"""Start, wait for, and stop a TorchServe instance of the detector, isolated in its own run folder.

    python scripts/server.py start     # default archive on 127.0.0.1:8080/8081/8082, waits for READY
    python scripts/server.py stop      # stops it and waits until no process is left
    python scripts/server.py status
    python scripts/server.py start --restore   # restart with the versions and default of the last snapshot

Each instance lives in a run folder (default ``.run/``): the rendered ``config.properties``, TorchServe's
``key_file.json`` (the API tokens), ``logs/``, its own temp folder (TorchServe keeps a machine-global pid
file in the temp folder; a private one lets several instances, e.g. tests, run side by side) and the
pid of the process group, which ``stop`` terminates as a whole.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
CONFIG_TEMPLATE = REPO / "config" / "config.properties"
DEFAULT_RUN_DIR = REPO / ".run"
DEFAULT_MODEL_STORE = REPO / "model_store"
DEFAULT_MODEL = "deepfake_detector"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerError(RuntimeError):
    """TorchServe did not start, did not become ready, or answered with an error."""


@dataclass
class TorchServeInstance:
    """One TorchServe process group with its own config, keys, logs and temp folder."""

    run_dir: Path = DEFAULT_RUN_DIR
    model_store: Path = DEFAULT_MODEL_STORE
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    config_template: Path = CONFIG_TEMPLATE
    extra_properties: dict[str, str] = field(default_factory=dict)
    grpc_inference_port: int | None = None
    """TorchServe always opens two gRPC listeners (7070/7071 unless told): None picks free ports, so that
    two instances on one machine do not collide."""
    grpc_management_port: int | None = None

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def metrics_config(self) -> Path:
        """config/metrics.yaml beside the template (the repository's when the template has none)."""
        beside = Path(self.config_template).resolve().parent / "metrics.yaml"
        return beside if beside.exists() else REPO / "config" / "metrics.yaml"

    @property
    def key_file(self) -> Path:
        return self.run_dir / "key_file.json"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "server.pid"

    def render_config(self, load_models: list[str]) -> Path:
        """Write the run folder's config.properties from the template, with absolute paths and our ports."""
        store = str(Path(self.model_store).resolve())
        text = self.config_template.read_text()
        text = text.replace("@MODEL_STORE@", store).replace("@LOAD_MODELS@", ",".join(load_models))
        text = text.replace("@METRICS_CONFIG@", str(self.metrics_config))
        listeners = (("inference_address", self.inference_port), ("management_address", self.management_port),
                     ("metrics_address", self.metrics_port))
        for key, port in listeners:
            text = "\n".join(
                f"{key}=http://127.0.0.1:{port}" if line.startswith(f"{key}=") else line
                for line in text.splitlines()
            ) + "\n"
        if self.grpc_inference_port is None:
            self.grpc_inference_port = free_port()
        if self.grpc_management_port is None:
            self.grpc_management_port = free_port()
        for key, port in (("grpc_inference_port", self.grpc_inference_port),
                          ("grpc_management_port", self.grpc_management_port)):
            lines = [line for line in text.splitlines() if not line.startswith(f"{key}=")]
            text = "\n".join([*lines, f"{key}={port}"]) + "\n"
        for key, value in self.extra_properties.items():
            text += f"{key}={value}\n"
        path = self.run_dir / "config.properties"
        path.write_text(text)
        return path

    @property
    def snapshot_dir(self) -> Path:
        return self.log_dir / "config"

    def latest_snapshot(self) -> Path | None:
        """The newest config snapshot TorchServe wrote (startup, after each management change, shutdown)."""
        snapshots = sorted(self.snapshot_dir.glob("*.cfg")) if self.snapshot_dir.is_dir() else []
        return snapshots[-1] if snapshots else None

    def render_restore_config(self) -> Path:
        """The latest snapshot, with the listeners and security settings of our template forced back on.

        A snapshot records whatever the server ran with; restoring it must not be a way to come back
        with public listeners, token authorization off or a wider ``allowed_urls``.
        """
        snapshot = self.latest_snapshot()
        if snapshot is None:
            raise ServerError(f"no snapshot in {self.snapshot_dir}: start once with snapshots on "
                              "(without --ncs)")
        template = _properties(self.render_config([]).read_text())
        kept = [line for line in snapshot.read_text().splitlines()
                if line.split("=", 1)[0].strip() not in (*ENFORCED_PROPERTIES, "tsConfigFile")]
        forced = [f"{key}={template[key]}" for key in ENFORCED_PROPERTIES if key in template]
        forced += [f"{key}={value}" for key, value in self.extra_properties.items()]
        path = self.run_dir / "restore.properties"
        path.write_text("\n".join([*kept, "# enforced by scripts/server.py", *forced]) + "\n")
        return path

    def start(self, load_models: list[str], snapshot: bool = False, restore: bool = False) -> None:
        """Launch TorchServe in its own process group; returns at once (see wait_ready).

        ``restore=True`` ignores ``load_models`` and brings back the registered versions and default
        versions of the latest snapshot in the run folder (see render_restore_config); it implies snapshots.
        """
        if self.pid() is not None:
            raise ServerError(f"a server from {self.run_dir} is already running (pid {self.pid()}); "
                              "stop it first")
        if shutil.which("java") is None:
            raise ServerError("TorchServe needs Java 11+ on PATH: apt-get install -y openjdk-17-jre-headless")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "tmp").mkdir(exist_ok=True)
        config = self.render_restore_config() if restore else self.render_config(load_models)
        env = dict(os.environ)
        env.update({
            "TMPDIR": str(self.run_dir / "tmp"),
            # TorchServe's launcher turns TEMP (not TMPDIR) into java.io.tmpdir, where the frontend unpacks
            # archives (tmp/models, which it empties at start) and puts the workers' sockets: without it,
            # instances on one machine wipe each other's unpacked models.
            "TEMP": str(self.run_dir / "tmp"),
            "LOG_LOCATION": str(self.log_dir),
            "METRICS_LOCATION": str(self.log_dir),
            "HF_HUB_OFFLINE": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        })
        command = [str(Path(sys.executable).parent / "torchserve"), "--start", "--foreground",
                   "--ts-config", str(config), "--model-store", str(Path(self.model_store).resolve())]
        if not (snapshot or restore):
            command.append("--ncs")
        with open(self.run_dir / "torchserve.out", "ab") as output:
            process = subprocess.Popen(command, cwd=self.run_dir, env=env, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.pid_file.write_text(str(process.pid))

    def pid(self) -> int | None:
        """The process group's leader if it is alive."""
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        _reap(pid)  # a leader that exited (e.g. a port taken) must not linger as a live-looking zombie
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return None
        return pid

    def keys(self, wait_s: float = 30.0) -> dict[str, str]:
        """TorchServe's current tokens: {"management": ..., "inference": ..., "api": ...}."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                data = json.loads(self.key_file.read_text())
                return {"management": data["management"]["key"], "inference": data["inference"]["key"],
                        "api": data["API"]["key"]}
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                if time.monotonic() > deadline:
                    raise ServerError(f"no key file at {self.key_file}: did TorchServe start?") from None
                time.sleep(0.2)

    def headers(self, kind: str = "inference") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys()[kind]}"}

    def wait_ready(self, model: str = DEFAULT_MODEL, timeout_s: float = 180.0,
                   version: str | None = None) -> None:
        """Block until every worker of the model (its default version, or ``version``) is READY."""
        deadline = time.monotonic() + timeout_s
        path = f"/models/{model}" + (f"/{version}" if version else "")
        last = "no answer"
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise ServerError(f"TorchServe exited; see {self.run_dir / 'torchserve.out'} "
                                  f"and {self.log_dir}")
            try:
                answer = requests.get(self.management_url + path, headers=self.headers("management"),
                                      timeout=5)
                if answer.status_code == 200:
                    description = answer.json()[0]
                    workers = description.get("workers", [])
                    if workers and all(w.get("status") == "READY" for w in workers):
                        return
                    last = f"workers {[w.get('status') for w in workers]}"
                else:
                    last = f"HTTP {answer.status_code}: {answer.text[:200]}"
            except (requests.ConnectionError, requests.Timeout, ServerError) as error:
                last = str(error)
            time.sleep(0.5)
        raise ServerError(f"{model} not READY after {timeout_s:.0f} s ({last}); "
                          f"see {self.log_dir}/model_log.log")

    def stop(self, timeout_s: float = 60.0) -> None:
        """Terminate the whole process group (frontend and workers) and wait until it is gone."""
        pid = self.pid()
        if pid is not None:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while self.pid() is not None and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.2)
            if self.pid() is not None:
                os.killpg(pid, signal.SIGKILL)
                while self.pid() is not None:
                    _reap(pid)
                    time.sleep(0.1)
        for stale in (self.pid_file, self.key_file):
            stale.unlink(missing_ok=True)

    def describe(self, model: str = DEFAULT_MODEL) -> list[dict[str, Any]]:
        answer = requests.get(f"{self.management_url}/models/{model}/all", headers=self.headers("management"),
                              timeout=10)
        answer.raise_for_status()
        return answer.json()


ENFORCED_PROPERTIES = (
    "inference_address", "management_address", "metrics_address", "grpc_inference_address",
    "grpc_management_address", "grpc_inference_port", "grpc_management_port", "disable_token_authorization",
    "enable_model_api", "allowed_urls", "model_store", "metrics_mode", "metrics_config", "max_request_size",
)


def _properties(text: str) -> dict[str, str]:
    """key=value lines of a properties file we wrote ourselves (no escapes, no continuation lines)."""
    values = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def _reap(pid: int) -> None:
    """Collect the leader if it is our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def sample_face_photo() -> Path | None:
    """A real face photo shipped by scikit-image (public domain), for the printed example."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "astronaut.png"
    return path if path.exists() else None


def example_curl(instance: TorchServeInstance, model: str, media: Path | None) -> str:
    token = instance.keys()["inference"]
    target = media or Path("face.jpg")
    return (f'curl -s -H "Authorization: Bearer {token}" -H "Content-Type: application/octet-stream" '
            f'--data-binary @{target} {instance.inference_url}/predictions/{model}')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    parser.add_argument("--model-store", type=Path, default=DEFAULT_MODEL_STORE)
    parser.add_argument("--archive", action="append", default=None,
                        help="archive file name in the model store to load at start (repeatable)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
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
        archives = args.archive or [f"{args.model}-1.0.mar"]
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
    print("Stop with: make stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
