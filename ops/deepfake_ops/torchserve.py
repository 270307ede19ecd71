"""One TorchServe: start it isolated in its own run folder, find its addresses and tokens, call its APIs.

:class:`TorchServeInstance` runs a server as a process group with its own config, keys, logs and temp
folder (TorchServe keeps a machine-global pid file in the temp folder; a private one lets several
instances, e.g. tests, run side by side). :class:`TorchServeClient` talks to any running server through an
:class:`Endpoint` (the run folder's ``config.properties`` and ``key_file.json``, or the
``TS_MANAGEMENT_TOKEN`` / ``TS_INFERENCE_TOKEN`` environment variables, which win). Every non-2xx answer
becomes a :class:`ServerRefusal` whose message is one line: what failed and what to do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests
from deepfake_detector.archive import DEFAULT_MODEL_NAME

from .paths import CONFIG_DIR, MODEL_STORE, RUN_DIR
from .ports import free_port

CONFIG_TEMPLATE = CONFIG_DIR / "config.properties"
TOKEN_ENV = {"management": "TS_MANAGEMENT_TOKEN", "inference": "TS_INFERENCE_TOKEN"}
WORKER_MARK = "model_service_worker"
"""In the command line of every TorchServe Python worker."""


class ServerError(RuntimeError):
    """TorchServe did not start, did not become ready, or answered with an error."""


@dataclass
class TorchServeInstance:
    """One TorchServe process group with its own config, keys, logs and temp folder."""

    run_dir: Path = RUN_DIR
    model_store: Path = MODEL_STORE
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    config_template: Path = CONFIG_TEMPLATE
    extra_properties: dict[str, str] = field(default_factory=dict)
    grpc_inference_port: int | None = None
    """TorchServe always opens two gRPC listeners (7070/7071 unless told): None picks free ports, so that
    two instances on one machine do not collide."""
    grpc_management_port: int | None = None

    def __post_init__(self) -> None:
        # TorchServe starts in its run folder: a relative path given here would point elsewhere from there.
        self.run_dir = Path(self.run_dir).resolve()

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
        return beside if beside.exists() else CONFIG_DIR / "metrics.yaml"

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
        template = parse_properties(self.render_config([]).read_text())
        kept = [line for line in snapshot.read_text().splitlines()
                if line.split("=", 1)[0].strip() not in (*ENFORCED_PROPERTIES, "tsConfigFile")]
        forced = [f"{key}={template[key]}" for key in ENFORCED_PROPERTIES if key in template]
        forced += [f"{key}={value}" for key, value in self.extra_properties.items()]
        path = self.run_dir / "restore.properties"
        path.write_text("\n".join([*kept, "# enforced by deepfake_ops.torchserve", *forced]) + "\n")
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
        return live_group_leader(self.pid_file)

    def keys(self, wait_s: float = 30.0) -> dict[str, str]:
        """TorchServe's current tokens: {"management": ..., "inference": ..., "api": ...}, waiting for the
        key file the frontend writes at start."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return read_keys(self.key_file)
            except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
                if time.monotonic() > deadline:
                    raise ServerError(f"no key file at {self.key_file}: did TorchServe start?") from None
                time.sleep(0.2)

    def keys_expire_within(self, seconds: float) -> bool:
        """Whether the inference or the management key in the key file expires within ``seconds``."""
        data = json.loads(self.key_file.read_text())
        return min(_expiry(data[kind]["expiration time"]) for kind in ("inference", "management")) \
            - time.time() < seconds

    def renew_keys(self, kinds: tuple[str, ...] = ("inference", "management"),
                   timeout_s: float = 30.0) -> dict[str, str]:
        """New keys from TorchServe (``POST /token?type=KIND`` with the API key, which never expires); the old
        ones stop working at once. Under the key file's lock, the one the job workers take to renew."""
        with locked(self.key_file.with_name(self.key_file.name + ".lock")):
            old = self.keys()
            for kind in kinds:
                try:
                    answer = requests.post(f"{self.management_url}/token", params={"type": kind},
                                           headers={"Authorization": f"Bearer {old['api']}"}, timeout=timeout_s)
                except requests.RequestException as error:
                    raise ServerError(f"renewing the {kind} key: {type(error).__name__}") from None
                if answer.status_code != 200:
                    raise ServerError(f"renewing the {kind} key: HTTP {answer.status_code}")
            deadline = time.monotonic() + timeout_s
            while True:  # the frontend rewrites key_file.json as it answers
                new = self.keys()
                if all(new[kind] != old[kind] for kind in kinds):
                    return new
                if time.monotonic() > deadline:
                    raise ServerError(f"renewed the keys, but {self.key_file} still holds an old one")
                time.sleep(0.02)

    def headers(self, kind: str = "inference") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys()[kind]}"}

    @property
    def endpoint(self) -> Endpoint:
        """This instance's addresses and key file (the ``TS_*_TOKEN`` variables are for other servers)."""
        return Endpoint(self.management_url, self.inference_url, Path(self.model_store), self.run_dir,
                        tokens_from_environment=False)

    def client(self, timeout_s: float = 180.0) -> TorchServeClient:
        return TorchServeClient(self.endpoint, timeout_s)

    def wait_ready(self, model: str = DEFAULT_MODEL_NAME, timeout_s: float = 180.0,
                   version: str | None = None) -> None:
        """Block until every worker of the model (its default version, or ``version``) is READY."""
        self.client(timeout_s=5).wait_ready(model, version, timeout_s, alive=lambda: self.pid() is not None)

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
                deadline = time.monotonic() + 30
                while self.pid() is not None:
                    if time.monotonic() > deadline:
                        raise ServerError(f"TorchServe's process group {pid} survived SIGKILL for 30 s")
                    _reap(pid)
                    time.sleep(0.1)
        for stale in (self.pid_file, self.key_file):
            stale.unlink(missing_ok=True)

    def describe(self, model: str = DEFAULT_MODEL_NAME) -> list[dict[str, Any]]:
        """Every registered version of the model, as the management API describes them."""
        return self.client().describe_all(model)


ENFORCED_PROPERTIES = (
    "inference_address", "management_address", "metrics_address", "grpc_inference_address",
    "grpc_management_address", "grpc_inference_port", "grpc_management_port", "disable_token_authorization",
    "enable_model_api", "allowed_urls", "model_store", "metrics_mode", "metrics_config", "max_request_size",
)


def read_keys(key_file: Path) -> dict[str, str]:
    """The tokens in TorchServe's ``key_file.json``: {"management": ..., "inference": ..., "api": ...}."""
    data = json.loads(Path(key_file).read_text())
    return {"management": data["management"]["key"], "inference": data["inference"]["key"],
            "api": data["API"]["key"]}


def parse_properties(text: str) -> dict[str, str]:
    """key=value lines of a Java properties file (comments and blank lines skipped; no continuations)."""
    pairs = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.strip()
    return pairs


def read_properties(path: Path) -> dict[str, str]:
    return parse_properties(path.read_text()) if path.exists() else {}


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (made if missing) for as long as the block runs."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _expiry(text: str) -> float:
    """TorchServe's ``2026-12-01T17:04:41.586898916Z`` (nanoseconds) as a Unix time."""
    whole, _, fraction = str(text).rstrip("Z").partition(".")
    moment = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.timezone.utc)
    return moment.timestamp() + float(f"0.{fraction or 0}")


def server_processes(leader: int) -> dict[str, list[psutil.Process]]:
    """A running server's processes by role: ``frontend`` (the JVM) and ``workers`` (one per model worker)."""
    roles: dict[str, list[psutil.Process]] = {"frontend": [], "workers": []}
    for member in psutil.Process(leader).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if WORKER_MARK in " ".join(member.cmdline()):
                roles["workers"].append(member)
            elif member.name() == "java":
                roles["frontend"].append(member)
    return roles


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User plus system CPU seconds the processes have used so far (those that have exited count no more)."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def live_group_leader(pid_file: Path) -> int | None:
    """The process group leader named in ``pid_file`` if its group is alive (a leader that exited, e.g. on a
    taken port, is reaped first, so that it does not linger as a live-looking zombie)."""
    try:
        pid = int(Path(pid_file).read_text())
    except (FileNotFoundError, ValueError):
        return None
    _reap(pid)
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return None
    return pid


def _reap(pid: int) -> None:
    """Collect the leader if it is our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)



class ServerRefusal(ServerError):
    """TorchServe could not be reached or answered with an error; the message says what to do."""

    def __init__(self, message: str, status: int | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


@dataclass
class Endpoint:
    """Where one TorchServe listens, which model store it serves, and where its tokens are."""

    management_url: str = "http://127.0.0.1:8081"
    inference_url: str = "http://127.0.0.1:8080"
    model_store: Path = MODEL_STORE
    run_dir: Path = RUN_DIR
    tokens_from_environment: bool = True
    """``TS_MANAGEMENT_TOKEN`` / ``TS_INFERENCE_TOKEN`` win over the key file (a server started elsewhere)."""
    fixed_token: str | None = None
    """One key for both kinds, instead of the key file: an operator key for a replica's sidecar, which adds
    the replica's own TorchServe keys (``deepfake_ops.gateway``)."""

    @property
    def key_file(self) -> Path:
        return self.run_dir / "key_file.json"

    @classmethod
    def from_run_dir(
        cls, run_dir: Path = RUN_DIR, management_url: str | None = None,
        inference_url: str | None = None, model_store: Path | None = None,
    ) -> Endpoint:
        """Read the addresses and the model store from the run folder's config.properties, if there is one."""
        run_dir = Path(run_dir)
        properties = read_properties(run_dir / "config.properties")
        return cls(
            management_url=(management_url or properties.get("management_address") or cls.management_url)
            .rstrip("/"),
            inference_url=(inference_url or properties.get("inference_address") or cls.inference_url)
            .rstrip("/"),
            model_store=Path(model_store or properties.get("model_store") or MODEL_STORE),
            run_dir=run_dir,
        )

    def token(self, kind: str) -> str:
        """The ``management`` or ``inference`` token: fixed, from the environment, else from the key file."""
        if self.fixed_token:
            return self.fixed_token
        from_env = os.environ.get(TOKEN_ENV[kind]) if self.tokens_from_environment else None
        if from_env:
            return from_env
        try:
            return read_keys(self.key_file)[kind]
        except FileNotFoundError:
            raise ServerRefusal(
                f"no {kind} token: {self.key_file} does not exist (is the server running from "
                f"{self.run_dir}? start it with `make serve`, pass --run-dir, or set {TOKEN_ENV[kind]})"
            ) from None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ServerRefusal(f"{self.key_file} holds no {kind} key; set {TOKEN_ENV[kind]}") from None


@dataclass
class Prediction:
    """One answer of ``/predictions``: status, JSON body (or text), and the client-side latency."""

    status: int
    body: Any
    seconds: float


class TorchServeClient:
    """The management and inference calls the rollout tools make, with errors turned into one line."""

    def __init__(self, endpoint: Endpoint, timeout_s: float = 180.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.session = requests.Session()

    def management(
        self, method: str, path: str, action: str, params: dict[str, Any] | None = None,
        hints: dict[int, str] | None = None, timeout_s: float | None = None,
    ) -> Any:
        """Call the management API; ``action`` and ``hints`` (status -> what to do) shape errors."""
        url = self.endpoint.management_url + path
        for attempt in range(2):
            token = self.endpoint.token("management")
            try:
                answer = self.session.request(method, url, params=params, headers={"Authorization": f"Bearer {token}"},
                                              timeout=timeout_s or self.timeout_s)
            except requests.ConnectionError:
                raise self._unreachable(self.endpoint.management_url, action) from None
            except requests.Timeout:
                raise ServerRefusal(f"{action}: no answer from {url} within {timeout_s or self.timeout_s:.0f} s; "
                                    f"see {self.endpoint.run_dir / 'logs'}") from None
            if not (attempt == 0 and self._renewed_meanwhile(answer, "management", token)):
                break
        if answer.status_code >= 300:
            raise self.refusal(answer, action, "management", hints or {})
        return answer.json() if answer.content else None

    def predict(self, model: str, version: str | None, body: bytes) -> Prediction:
        """POST raw bytes to /predictions/MODEL[/VERSION]; HTTP errors are returned, not raised."""
        path = f"/predictions/{model}" + (f"/{version}" if version else "")
        for attempt in range(2):
            token = self.endpoint.token("inference")
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
            started = time.perf_counter()
            try:
                answer = self.session.post(self.endpoint.inference_url + path, data=body, headers=headers,
                                           timeout=self.timeout_s)
            except requests.ConnectionError:
                raise self._unreachable(self.endpoint.inference_url, f"POST {path}") from None
            except requests.Timeout:
                raise ServerRefusal(f"POST {path}: no answer within {self.timeout_s:.0f} s (TorchServe gives up on "
                                    f"a batch after responseTimeout); see {self.endpoint.run_dir / 'logs'}") from None
            if not (attempt == 0 and self._renewed_meanwhile(answer, "inference", token)):
                break
        seconds = time.perf_counter() - started
        try:
            content: Any = answer.json()
        except ValueError:
            content = answer.text
        if _is_token_refusal(answer.status_code, content):
            raise self.refusal(answer, f"POST {path}", "inference", {})
        return Prediction(answer.status_code, content, seconds)

    def _renewed_meanwhile(self, answer: requests.Response, kind: str, token: str) -> bool:
        """The server refused a key that the key file no longer holds (renewed during the call): ask again. Behind
        a sidecar (a fixed operator key) the refused key is the replica's, renewed under the sidecar: ask again
        a second later, once it has the new one."""
        try:
            refused = _is_token_refusal(answer.status_code, answer.json())
        except ValueError:
            refused = answer.status_code == 401
        if not refused:
            return False
        if self.endpoint.fixed_token:
            time.sleep(1.0)
            return answer.status_code == 400  # TorchServe's refusal; a 401 is the sidecar refusing the operator key
        try:
            return self.endpoint.token(kind) != token
        except ServerRefusal:
            return False

    def refusal(
        self, answer: requests.Response, action: str, kind: str, hints: dict[int, str],
    ) -> ServerRefusal:
        status = answer.status_code
        try:
            detail = answer.json()
        except ValueError:
            detail = {"message": answer.text.strip()}
        message = detail.get("message", "") if isinstance(detail, dict) else str(detail)
        error_type = detail.get("type") if isinstance(detail, dict) else None
        if _is_token_refusal(status, detail):
            what = (f"the server refused the {kind} token (wrong, or expired: tokens last 60 min); use the "
                    f"running server's {self.endpoint.key_file} or set {TOKEN_ENV[kind]}; renew with "
                    f"`curl -X POST -H \"Authorization: Bearer $API_KEY\" "
                    f"{self.endpoint.management_url}/token?type={kind}`")
        elif status in hints:
            what = f"{message} -> {hints[status]}"
        elif status >= 500:
            what = (f"the server failed ({message or 'no detail'}); see "
                    f"{self.endpoint.run_dir / 'logs' / 'model_log.log'} and ts_log.log")
        else:
            what = message or answer.text.strip() or "no detail"
        return ServerRefusal(f"{action}: HTTP {status}: {what}", status, error_type)

    def describe(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        """``GET /models/MODEL[/VERSION]``: the default version (or the given one) with its workers."""
        path = f"/models/{model}" + (f"/{version}" if version else "")
        return self.management("GET", path, f"describe {model}" + (f" {version}" if version else ""))

    def describe_all(self, model: str) -> list[dict[str, Any]]:
        """``GET /models/MODEL/all``: every registered version (with no flag for the default)."""
        return self.management("GET", f"/models/{model}/all", f"list the versions of {model}")

    def wait_ready(
        self, model: str, version: str | None = None, timeout_s: float = 180.0,
        alive: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Block until every worker of the model's default version (or ``version``) is READY; returns its
        description. ``alive`` (e.g. the server's process is running) is asked on every poll."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                raise ServerError(f"TorchServe exited; see {self.endpoint.run_dir / 'torchserve.out'} and "
                                  f"{self.endpoint.run_dir / 'logs'}")
            try:
                description = self.describe(model, version)[0]
                states = [str(worker.get("status")) for worker in description.get("workers", [])]
                if states and all(state == "READY" for state in states):
                    return description
                last = f"workers {states}"
            except ServerRefusal as refusal:
                last = str(refusal)
            time.sleep(0.5)
        raise ServerError(f"{model} {version or '(default)'} not READY after {timeout_s:.0f} s ({last}); see "
                          f"{self.endpoint.run_dir / 'logs' / 'model_log.log'}")

    def _unreachable(self, url: str, action: str) -> ServerRefusal:
        return ServerRefusal(f"{action}: no TorchServe answers at {url}; start it with `make serve`, or "
                             "point at the running one with --run-dir / --management-url / --inference-url")


def _is_token_refusal(status: int, detail: Any) -> bool:
    """TorchServe 0.12 answers a missing or wrong token with 400 InvalidKeyException (401 elsewhere)."""
    return status == 401 or (status == 400 and isinstance(detail, dict)
                             and detail.get("type") == "InvalidKeyException")
