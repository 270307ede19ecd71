"""The fleet's gateway: nginx (Debian's package, with its njs module) rendered from ``config/gateway/`` and run
as a process group in its own folder, like each TorchServe.

Why nginx: it is maintained, packaged by Debian (Envoy is not), keeps a request's whole body so that a POST
that failed on one replica is sent again to the next (HAProxy retries only what fits its buffer), limits
rates per key in shared memory, terminates TLS, and reloads its configuration without dropping a request.

One nginx holds two kinds of server block:

* the **gateway** (``servers/gateway.conf``): checks the client's key against hashed keys
  (``gateway_keys``), applies that key's rate (429 with ``Retry-After``) and the body limit, gives every
  request an id, and balances across the replicas in service, retrying a failed request on the next;
* one **sidecar** per replica (``servers/sidecar-NAME.conf``): the only holder of that replica's TorchServe
  keys, which it adds to what the gateway forwards. It reads them, and whether the replica is in service,
  from the replica's state file (``replicas/NAME.json``, mode 600) on every request: the fleet keeper renews
  a key or drains a replica by rewriting that file, with no reload, so no client connection is ever closed.

In a cluster the same files are split: the gateway Deployment renders the first, each replica's pod the
second (``deploy/deepfake-fleet.yaml``).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .gateway_keys import GatewayKey, render_key_files
from .paths import CONFIG_DIR, RUN_DIR
from .torchserve import CONFIG_TEMPLATE, live_group_leader, read_properties

TEMPLATES = CONFIG_DIR / "gateway"
JS_MODULE_CANDIDATES = (Path("/usr/lib/nginx/modules/ngx_http_js_module.so"),
                        Path("/usr/share/nginx/modules/ngx_http_js_module.so"))
PLACEHOLDER = re.compile(r"@[A-Z][A-Z_]*@")
INSTALL_HINT = "apt-get install -y nginx-light libnginx-mod-http-js (or `make nginx`)"
GATEWAY_PORT = 8000
"""Where the gateway listens unless told otherwise: a local fleet, and the cluster's gateway pods."""


class GatewayError(RuntimeError):
    """nginx is missing, refused the rendered configuration, or did not start or reload."""


@dataclass(frozen=True)
class ReplicaRoute:
    """Where one replica's TorchServe and its sidecar listen."""

    name: str
    torchserve_inference: str
    """host:port of the replica's own inference listener (loopback, or the pod's)."""
    torchserve_management: str
    sidecar_host: str
    sidecar_inference_port: int
    sidecar_management_port: int

    @property
    def upstream(self) -> str:
        return f"{self.sidecar_host}:{self.sidecar_inference_port}"


@dataclass(frozen=True)
class ReplicaState:
    """What a replica's sidecar reads on every request: whether to serve, and the replica's current keys."""

    in_service: bool
    inference_key: str = ""
    management_key: str = ""


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = GATEWAY_PORT
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    worker_processes: int = 2
    upstream_tries: int = 0
    """How many replicas one request may be tried on (the first and the retries); 0: every replica."""
    serve_gateway: bool = True
    """False in a replica's pod: sidecar blocks only."""
    serve_sidecars: bool = True
    """False in a cluster's gateway: the sidecars run in the replicas' pods."""

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_certificate else "http"
        return f"{scheme}://{self.host}:{self.port}"


def torchserve_limits() -> tuple[int, int]:
    """The body limit (TorchServe's ``max_request_size``) and the time a request may take
    (``default_response_timeout`` plus a margin), from the server config: one owner for both."""
    properties = read_properties(CONFIG_TEMPLATE)
    return int(properties["max_request_size"]), int(properties["default_response_timeout"]) + 10


def js_module() -> Path:
    for candidate in JS_MODULE_CANDIDATES:
        if candidate.exists():
            return candidate
    raise GatewayError(f"nginx's njs module is missing: {INSTALL_HINT}")


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if found is None:
        raise GatewayError(f"nginx is not installed: {INSTALL_HINT}")
    return found


def _fill(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", value)
    leftover = PLACEHOLDER.search(template)
    if leftover:
        raise GatewayError(f"the gateway template has no value for {leftover.group()}")
    return template


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(text)
    os.replace(path.with_suffix(".tmp"), path)


class Gateway:
    """One nginx process group with its rendered configuration, logs and temp folders."""

    def __init__(self, run_dir: Path = RUN_DIR / "fleet" / "gateway") -> None:
        self.run_dir = Path(run_dir)

    @property
    def config(self) -> Path:
        return self.run_dir / "nginx.conf"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def access_log(self) -> Path:
        return self.log_dir / "access.log"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "gateway.pid"

    def secret(self) -> str:
        """The shared secret the gateway shows the sidecars (made once, mode 600)."""
        path = self.run_dir / "gateway_secret"
        if not path.exists():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _write_private(path, secrets.token_urlsafe(32))
        return path.read_text().strip()

    # ------------------------------------------------------------------------------------------ render

    def render(self, settings: GatewaySettings, routes: list[ReplicaRoute], keys: list[GatewayKey]) -> None:
        """Write nginx.conf and every file it includes; nothing is reloaded (see :meth:`apply`)."""
        max_body, timeout_s = torchserve_limits()
        for folder in ("logs", "servers", "tmp"):
            (self.run_dir / folder).mkdir(parents=True, exist_ok=True)
        self.log_dir.chmod(0o700)
        user = pwd.getpwuid(os.geteuid()).pw_name
        common = {"RUN": str(self.run_dir.resolve()), "GATEWAY_SECRET": self.secret(),
                  "MAX_BODY_BYTES": str(max_body), "READ_TIMEOUT_S": str(timeout_s)}
        _write_private(self.config, _fill((TEMPLATES / "nginx.conf").read_text(), {
            **common, "JS_MODULE": str(js_module()), "AUTH_JS": str((TEMPLATES / "client_auth.js").resolve()),
            "WORKER_PROCESSES": str(settings.worker_processes),
            # nginx started as root runs its workers as nobody, who cannot enter a private run folder.
            "USER": f"user {user};" if os.geteuid() == 0 else "",
        }))
        render_key_files(keys, self.run_dir)
        servers = self.run_dir / "servers"
        for stale in servers.glob("*.conf"):
            stale.unlink()
        if settings.serve_gateway:
            listen = f"listen {settings.host}:{settings.port}"
            if settings.tls_certificate:
                listen += (f" ssl;\n    ssl_certificate {Path(settings.tls_certificate).resolve()};\n"
                           f"    ssl_certificate_key {Path(settings.tls_key or settings.tls_certificate).resolve()};\n"
                           "    ssl_protocols TLSv1.2 TLSv1.3")
            tries = settings.upstream_tries or max(2, len(routes))
            _write_private(servers / "gateway.conf", _fill((TEMPLATES / "gateway_server.conf").read_text(), {
                **common, "LISTEN": listen + ";", "UPSTREAM_TRIES": str(tries)}))
            # max_fails=0: nginx never takes a replica out on its own; the keeper does (its sidecar answers 503
            # at once), so a replica drained for a key renewal is not mistaken for a dead one.
            lines = [f"server {route.upstream} max_fails=0;  # {route.name}" for route in routes]
            if not routes:
                raise GatewayError("a gateway needs at least one replica")
            (self.run_dir / "upstream_servers.conf").write_text("\n".join(lines) + "\n")
        for route in routes if settings.serve_sidecars else []:
            if not self.state_file(route.name).exists():
                self.publish(route.name, ReplicaState(in_service=False))
            (servers / f"sidecar-{route.name}.conf").write_text(_fill((TEMPLATES / "sidecar.conf").read_text(), {
                **common, "REPLICA": route.name, "SIDECAR_HOST": route.sidecar_host,
                "SIDECAR_INFERENCE_PORT": str(route.sidecar_inference_port),
                "SIDECAR_MANAGEMENT_PORT": str(route.sidecar_management_port),
                "TORCHSERVE_INFERENCE": route.torchserve_inference,
                "TORCHSERVE_MANAGEMENT": route.torchserve_management,
                "STATE_FILE": str(self.state_file(route.name).resolve()),
            }))

    def state_file(self, replica: str) -> Path:
        return self.run_dir / "replicas" / f"{replica}.json"

    def publish(self, replica: str, state: ReplicaState) -> None:
        """Tell the replica's sidecar whether to serve and which keys to add: it reads the file on every
        request, so this takes effect at once, with no reload (and no connection closed)."""
        path = self.state_file(replica)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        _write_private(path, json.dumps(asdict(state)))

    def check(self) -> None:
        """``nginx -t`` on the rendered files: a reload never swaps in a configuration nginx refuses."""
        result = subprocess.run(self._command("-t"), capture_output=True, text=True)
        if result.returncode != 0:
            problem = next((line for line in result.stderr.splitlines() if "[emerg]" in line), result.stderr.strip())
            raise GatewayError(f"nginx refused the gateway configuration: {problem}")

    def _command(self, *extra: str) -> list[str]:
        return [nginx_binary(), "-p", str(self.run_dir.resolve()), "-c", str(self.config.resolve()),
                "-e", str((self.log_dir / "error.log").resolve()), *extra]

    # ------------------------------------------------------------------------------------------ process

    def start(self, timeout_s: float = 15.0) -> None:
        if self.pid() is not None:
            raise GatewayError(f"a gateway from {self.run_dir} is already running (pid {self.pid()})")
        self.check()
        with open(self.log_dir / "nginx.out", "ab") as output:
            process = subprocess.Popen(self._command(), cwd=self.run_dir, stdout=output, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.pid_file.write_text(str(process.pid))
        deadline = time.monotonic() + timeout_s
        while len(self.workers()) == 0:
            if process.poll() is not None:
                raise GatewayError(f"nginx exited at start; see {self.log_dir / 'error.log'}")
            if time.monotonic() > deadline:
                raise GatewayError(f"nginx started no worker in {timeout_s:.0f} s; see {self.log_dir}")
            time.sleep(0.05)

    def pid(self) -> int | None:
        return live_group_leader(self.pid_file)

    def workers(self) -> dict[int, bool]:
        """The master's worker processes: pid -> whether it is an old one finishing its requests."""
        master = self.pid()
        found: dict[int, bool] = {}
        if master is None:
            return found
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                parent = int(stat.rsplit(")", 1)[1].split()[1])
                if parent == master:
                    title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    if "worker process" in title:
                        found[int(entry.name)] = "shutting down" in title
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
        return found

    def reload(self, timeout_s: float = 180.0) -> None:
        """Check the rendered files, then swap them in; returns once every old worker has finished its
        requests (so a request sent before the call was answered under the old configuration)."""
        master = self.pid()
        if master is None:
            raise GatewayError(f"no gateway running from {self.run_dir}")
        self.check()
        before = set(self.workers())
        os.kill(master, signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        while True:
            now = self.workers()
            fresh = [pid for pid, old in now.items() if pid not in before and not old]
            if not (before & set(now)) and fresh:
                return
            if time.monotonic() > deadline:
                raise GatewayError(f"nginx did not finish reloading in {timeout_s:.0f} s; see {self.log_dir}")
            time.sleep(0.02)

    def reload_keys(self, keys: list[GatewayKey]) -> None:
        render_key_files(keys, self.run_dir)
        self.reload()

    def stop(self, timeout_s: float = 30.0) -> None:
        pid = self.pid()
        if pid is not None:
            os.killpg(pid, signal.SIGQUIT)  # graceful: requests in flight finish
            deadline = time.monotonic() + timeout_s
            while self.pid() is not None:
                if time.monotonic() > deadline:
                    os.killpg(pid, signal.SIGKILL)
                    deadline += 10
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
