"""The fleet in a cluster (``deploy/deepfake-fleet.yaml``): the keeper's two halves, one command per container.

    python -m deepfake_ops.pod sidecar ...   # each detector pod, beside TorchServe: that replica's sidecar
    python -m deepfake_ops.pod gateway ...   # the gateway Deployment: every ready pod of the headless Service
    python -m deepfake_ops.pod ready ...     # the sidecar's readinessProbe: exit 0 only while in service

Why one module, one job per command: on one machine ``deepfake_ops.fleet`` starts TorchServe, runs the gateway
and every sidecar in one nginx, and tends them all. In a cluster the kubelet starts and restarts TorchServe and
the headless Service's DNS lists the ready pods, so what is left splits cleanly: a sidecar tends its own
replica only (joins it once it serves the desired state, drains it to renew its keys, takes it out when it
stops answering) and holds that replica's TorchServe keys and never a client key; the gateway holds the
client keys and never a TorchServe key. Both render the same templates (``deepfake_ops.gateway``) and reuse
the keeper's and the rollout's pieces; nothing here starts TorchServe.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from deepfake_detector.archive import DEFAULT_MODEL_NAME

from .fleet import (
    DRAIN_TIMEOUT_S,
    FAILURES_BEFORE_OUT,
    HEALTH_TIMEOUT_S,
    ReplicaPhase,
    join_step,
    publish_replica,
    serves,
    wait_until_idle,
)
from .gateway import GATEWAY_PORT, Gateway, GatewayError, GatewaySettings, ReplicaRoute
from .gateway_keys import GatewayKeys, KeyFileError
from .replicas import LayoutError, discover
from .rollout import RolloutError
from .torchserve import ServerError, TorchServeInstance, read_keys

logger = logging.getLogger("deepfake_ops.pod")

APP_HOME = Path(os.environ.get("APP_HOME", "/srv/deepfake"))
SIDECAR_INFERENCE_PORT = 8443
SIDECAR_MANAGEMENT_PORT = 8444
RENEW_BEFORE_S = 300.0
"""The sidecar renews TorchServe's keys this long before they expire; the TorchServe container's own health
check renews (undrained) only later, as a fallback (``--renew-before 2`` in the manifest)."""
RENEW_JITTER_S = 60.0
REPORT_FILE = "sidecar.json"
READY_MAX_AGE_S = 60.0
"""Above the longest step of the loop while in service (TorchServe calls timing out); a drain may take longer,
but a draining replica is not ready anyway."""
RELOAD_WAIT_S = 5.0
LOG_MAX_BYTES = 32 * 2**20
SECRET_PATTERN = re.compile(r"^[A-Za-z0-9_-]{32,256}$")
"""The gateway secret goes into nginx's config verbatim, and an empty one would match a request without the
header: only a long token is accepted (``openssl rand -hex 32``)."""
KEPT_ERRORS = (ServerError, GatewayError, RolloutError, KeyFileError, OSError, ValueError, KeyError,
               requests.RequestException)


class PodError(RuntimeError):
    """A role cannot start or keep running; the container exits and the kubelet restarts it."""


# ------------------------------------------------------------------------------------------ shared pieces


def install_secret(secret_file: Path, gateway: Gateway) -> bool:
    """Copy the mounted gateway secret to where :meth:`Gateway.secret` reads it; True if it changed."""
    try:
        secret = Path(secret_file).read_text().strip()
    except FileNotFoundError:
        raise PodError(f"no gateway secret at {secret_file}: mount the deepfake-gateway-secret Secret") from None
    if not SECRET_PATTERN.match(secret):
        raise PodError(f"the gateway secret in {secret_file} must be 32-256 letters, digits, '_' or '-' "
                       "(kubectl create secret generic deepfake-gateway-secret "
                       "--from-literal=secret=\"$(openssl rand -hex 32)\")")
    target = gateway.run_dir / "gateway_secret"
    if target.exists() and target.read_text().strip() == secret:
        return False
    gateway.run_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(target.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(secret)
    os.replace(target.with_suffix(".tmp"), target)
    return True


def file_signature(paths: list[Path]) -> tuple[Any, ...]:
    """Changes when a mounted Secret is updated (the kubelet swaps in new files: a new inode and mtime)."""
    signature = []
    for path in paths:
        try:
            stat = Path(path).stat()
            signature.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            signature.append(None)
    return tuple(signature)


def rotate_logs(gateway: Gateway, max_bytes: int = LOG_MAX_BYTES) -> None:
    """Keep nginx's logs in the pod's run folder bounded: one old file each, then SIGUSR1 (reopen)."""
    rotated = False
    for log in (gateway.access_log, gateway.log_dir / "error.log"):
        try:
            if log.stat().st_size > max_bytes:
                os.replace(log, log.with_name(log.name + ".1"))
                rotated = True
        except FileNotFoundError:
            continue
    master = gateway.pid()
    if rotated and master is not None:
        os.kill(master, signal.SIGUSR1)


class Role:
    """What both roles share: one nginx in a run folder, the mounted keys and secret, signals, the loop."""

    def __init__(self, run_dir: Path, key_file: Path, secret_file: Path, settings: GatewaySettings,
                 interval_s: float) -> None:
        self.gateway = Gateway(run_dir)
        self.key_file = Path(key_file)
        self.secret_file = Path(secret_file)
        self.settings = settings
        self.interval_s = interval_s
        self.stopping = False
        self.current: list[ReplicaRoute] = []
        self.applied_inputs: tuple[Any, ...] = ()

    @property
    def watched(self) -> list[Path]:
        files = [self.key_file, self.secret_file]
        return files + [Path(p) for p in (self.settings.tls_certificate, self.settings.tls_key) if p]

    def routes(self) -> list[ReplicaRoute]:
        raise NotImplementedError

    def render(self, routes: list[ReplicaRoute]) -> None:
        install_secret(self.secret_file, self.gateway)
        self.gateway.render(self.settings, routes, GatewayKeys(self.key_file).all())

    def start(self, routes: list[ReplicaRoute]) -> None:
        self.applied_inputs = file_signature(self.watched)
        self.render(routes)
        self.current = routes
        # The run folder is a volume that outlives a container restart; its nginx did not (a pid in this
        # container's namespace would be another process).
        self.gateway.pid_file.unlink(missing_ok=True)
        self.gateway.start()

    def refresh(self, routes: list[ReplicaRoute]) -> bool:
        """Re-render and reload (gracefully) when the routes or a mounted key file, secret or certificate (a
        Secret update) changed; True if it did. On an error nginx keeps the configuration it runs."""
        inputs = file_signature(self.watched)
        same_routes = sorted(r.upstream for r in routes) == sorted(r.upstream for r in self.current)
        if not routes or (same_routes and inputs == self.applied_inputs):
            return False
        self.render(routes)
        self.reload()
        self.current, self.applied_inputs = routes, inputs
        return True

    def reload(self) -> None:
        """Swap the rendered files in. Old workers finish their requests meanwhile, not awaited for long: a
        video may take minutes, and the loop must keep tending (and reporting to the readinessProbe)."""
        self.gateway.check()
        try:
            self.gateway.reload(timeout_s=RELOAD_WAIT_S)
        except GatewayError:
            if self.gateway.pid() is None:
                raise
            logger.info("nginx reloaded; its old workers still finish their requests")

    def stop_soon(self, *_: Any) -> None:
        self.stopping = True

    def sleep(self) -> None:
        deadline = time.monotonic() + self.interval_s
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.2, self.interval_s))

    def ensure_nginx(self) -> None:
        if self.gateway.pid() is None:
            raise PodError(f"nginx exited; see {self.gateway.log_dir / 'error.log'}")


# ---------------------------------------------------------------------------------------------- sidecar


@dataclass
class SidecarState(ReplicaPhase):
    """What ``sidecar.json`` shows (and ``ready`` reads): the keeper's view of one replica, and its name."""

    replica: str = ""


def replica_name(raw: str) -> str:
    """A name for file names and nginx's config (a pod name already is one)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", raw)[:63] or "replica"


class Sidecar(Role):
    """The replica's sidecar block, and the keeper's tending of that one replica, without starting TorchServe."""

    def __init__(self, run_dir: Path, torchserve_dir: Path, history: Path, key_file: Path, secret_file: Path,
                 name: str, model: str = DEFAULT_MODEL_NAME, listen: str = "0.0.0.0",
                 inference_port: int = SIDECAR_INFERENCE_PORT, management_port: int = SIDECAR_MANAGEMENT_PORT,
                 torchserve_inference_port: int = 8080, torchserve_management_port: int = 8081,
                 workers: int | None = None, renew_before_s: float = RENEW_BEFORE_S, interval_s: float = 1.0,
                 worker_processes: int = 2) -> None:
        super().__init__(run_dir, key_file, secret_file,
                         GatewaySettings(serve_gateway=False, worker_processes=worker_processes), interval_s)
        self.name = replica_name(name)
        self.route = ReplicaRoute(self.name, f"127.0.0.1:{torchserve_inference_port}",
                                  f"127.0.0.1:{torchserve_management_port}", listen, inference_port,
                                  management_port)
        # Only its properties and key calls: the kubelet runs this TorchServe, not us.
        self.instance = TorchServeInstance(run_dir=Path(torchserve_dir), inference_port=torchserve_inference_port,
                                           management_port=torchserve_management_port)
        self.history = Path(history)
        self.model = model
        self.workers = workers
        # Pods started together would drain together (the gateway then has no pod to send to): each renews a
        # random part of a minute earlier than the others.
        self.renew_before_s = renew_before_s + random.uniform(0.0, RENEW_JITTER_S)
        self.state = SidecarState(replica=self.name)
        self.published: tuple[str, str] | None = None
        self.api_key: str | None = None

    def routes(self) -> list[ReplicaRoute]:
        return [self.route]

    @property
    def report_file(self) -> Path:
        return self.gateway.run_dir / REPORT_FILE

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop_soon)
        signal.signal(signal.SIGINT, self.stop_soon)
        self.gateway.run_dir.mkdir(parents=True, exist_ok=True)
        self.publish()  # out: a restarted sidecar does not inherit the last one's in_service
        self.start(self.routes())
        logger.info("sidecar %s on %s:%d/%d for TorchServe at %s", self.name, self.route.sidecar_host,
                    self.route.sidecar_inference_port, self.route.sidecar_management_port,
                    self.instance.management_url)
        try:
            while not self.stopping:
                self.ensure_nginx()
                try:
                    if self.refresh(self.routes()):
                        logger.info("the mounted keys or secret changed: nginx reloaded")
                except (PodError, GatewayError, KeyFileError, OSError) as error:
                    self.note(f"not reloaded: {type(error).__name__}: {error}")
                self.tend()
                rotate_logs(self.gateway)
                self.report()
                self.sleep()
        finally:
            self.set_phase("starting", "stopped")
            self.publish()
            self.report(stopped=True)
            self.gateway.stop()
            logger.info("sidecar %s stopped", self.name)

    # ----------------------------------------------------------------------------------------- tending

    def tend(self) -> None:
        """One step of the keeper's ``_tend`` for this replica (the kubelet restarts TorchServe itself)."""
        state = self.state
        try:
            try:
                keys = read_keys(self.instance.key_file)
            except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
                if state.phase != "starting":
                    self.out(f"no TorchServe key file at {self.instance.key_file}: TorchServe is not running")
                return
            if self.api_key is not None and keys["api"] != self.api_key:
                state.restarts += 1  # TorchServe makes a new API key only when it starts
                self.api_key = keys["api"]
                self.out("its TorchServe restarted; joining again")
                return
            self.api_key = keys["api"]
            client = self.instance.client(timeout_s=HEALTH_TIMEOUT_S)
            if state.phase == "starting":
                if join_step(client, self.model, self.history, self.workers, self.name):
                    self.set_phase("in_service", None)
                    state.failures = 0
                    self.publish()
                    logger.info("%s joined the fleet", self.name)
                return
            if not serves(self.instance.client(timeout_s=HEALTH_TIMEOUT_S), self.model):
                state.failures += 1
                if state.failures >= FAILURES_BEFORE_OUT:
                    self.out("it stopped answering its health check")
                return
            state.failures = 0
            if self.instance.keys_expire_within(self.renew_before_s):
                self.renew()
            elif self.published != (keys["inference"], keys["management"]):
                logger.info("%s: its keys were renewed outside the sidecar; publishing them", self.name)
                self.publish()
        except KEPT_ERRORS as error:
            self.note(f"{type(error).__name__}: {error}")

    def note(self, problem: str) -> None:
        if problem != self.state.problem:
            logger.warning("%s: %s", self.name, problem)
        self.state.problem = problem

    def set_phase(self, phase: str, problem: str | None) -> None:
        self.state.phase, self.state.problem, self.state.since = phase, problem, time.time()

    def out(self, why: str) -> None:
        """Not served until it joins again."""
        self.set_phase("starting", why)
        logger.warning("%s: %s", self.name, why)
        self.publish()

    def renew(self) -> None:
        """Drain (the gateway sends this pod's requests to the others, and those already sent to TorchServe are
        answered: the pod shares one network namespace), renew both keys, serve again."""
        self.set_phase("draining", "renewing its TorchServe keys")
        self.publish()
        if not wait_until_idle(self.instance.inference_port, DRAIN_TIMEOUT_S, stop=lambda: self.stopping):
            logger.warning("%s: requests still open after %.0f s of draining; renewing anyway", self.name,
                           DRAIN_TIMEOUT_S)
        try:
            self.instance.renew_keys()
        except ServerError as error:
            self.out(f"key renewal failed: {error}")
            return
        self.state.renewals += 1
        self.set_phase("in_service", None)
        self.publish()
        logger.info("%s: TorchServe keys renewed (drained first)", self.name)

    def publish(self) -> None:
        self.published = publish_replica(self.gateway, self.name, self.instance.key_file,
                                         self.state.phase == "in_service")

    def report(self, stopped: bool = False) -> None:
        report = {"updated": time.time(), "stopped": stopped, **vars(self.state)}
        temporary = self.report_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(report, indent=1))
        os.replace(temporary, self.report_file)


def ready(run_dir: Path, max_age_s: float = READY_MAX_AGE_S) -> tuple[bool, str]:
    """The readinessProbe's answer: the sidecar reported lately, its nginx runs, and the state it published
    says in service (what its sidecar block reads on every request)."""
    gateway = Gateway(run_dir)
    try:
        report = json.loads((gateway.run_dir / REPORT_FILE).read_text())
        age = time.time() - float(report["updated"])
        replica = str(report["replica"])
    except FileNotFoundError:
        return False, f"no sidecar report in {run_dir}: the sidecar has not started"
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        return False, f"unreadable sidecar report in {run_dir}: {type(error).__name__}"
    if report.get("stopped"):
        return False, f"{replica}: the sidecar stopped"
    if age > max_age_s:
        return False, f"{replica}: the sidecar last reported {age:.0f} s ago"
    if gateway.pid() is None:
        return False, f"{replica}: its nginx is not running"
    try:
        state = json.loads(gateway.state_file(replica).read_text())
    except (FileNotFoundError, json.JSONDecodeError) as error:
        return False, f"{replica}: no published state ({type(error).__name__})"
    if state.get("in_service") is not True:
        return False, f"{replica}: {report.get('phase')} ({report.get('problem') or 'not in service'})"
    return True, f"{replica}: in service"


# ---------------------------------------------------------------------------------------------- gateway


def routes_from_urls(urls: list[str]) -> list[ReplicaRoute]:
    """One route per pod, named after its IP; only the sidecar's address matters in the gateway role."""
    routes = []
    for url in urls:
        host, _, port = url.split("//", 1)[-1].rstrip("/").rpartition(":")
        name = host.replace(".", "-").replace(":", "-")
        address = f"[{host}]" if ":" in host else host
        routes.append(ReplicaRoute(name, f"{address}:{port}", f"{address}:{port}", address, int(port), int(port)))
    return routes


class GatewayRole(Role):
    """The gateway block in front of every ready pod the headless Service lists, re-resolved every few seconds;
    nginx is reloaded (gracefully) only when that set of pods, or a mounted file, changes."""

    def __init__(self, run_dir: Path, service: str, port: int, key_file: Path, secret_file: Path,
                 settings: GatewaySettings, interval_s: float = 5.0,
                 resolve: Callable[[str, int], list[str]] = discover, stop_timeout_s: float = 120.0) -> None:
        super().__init__(run_dir, key_file, secret_file, settings, interval_s)
        self.service, self.port, self.resolve = service, port, resolve
        self.stop_timeout_s = stop_timeout_s
        self.problem: str | None = None

    def routes(self) -> list[ReplicaRoute]:
        """The pods the Service lists now; the last known ones while it lists none (their sidecars answer or
        refuse, and the gateway answers 503 no_replica)."""
        try:
            found = routes_from_urls(self.resolve(self.service, self.port))
        except LayoutError as error:
            if str(error) != self.problem:
                logger.warning("%s", error)
            self.problem = str(error)
            return self.current
        self.problem = None
        return found or self.current

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop_soon)
        signal.signal(signal.SIGINT, self.stop_soon)
        routes = self.routes()
        while not self.stopping and not routes:
            self.sleep()
            routes = self.routes()
        if self.stopping:
            return
        self.start(routes)
        logger.info("gateway at %s for %s", self.settings.url, ", ".join(r.upstream for r in self.current))
        try:
            while not self.stopping:
                self.ensure_nginx()
                try:
                    if self.refresh(self.routes()):
                        logger.info("nginx reloaded; replicas %s", ", ".join(r.upstream for r in self.current))
                except (PodError, GatewayError, KeyFileError, OSError) as error:
                    logger.warning("not reloaded: %s", error)
                rotate_logs(self.gateway)
                self.sleep()
        finally:
            self.gateway.stop(self.stop_timeout_s)
            logger.info("gateway stopped")


# -------------------------------------------------------------------------------------------------- CLI


def _add_nginx_inputs(parser: argparse.ArgumentParser, run_dir: Path) -> None:
    parser.add_argument("--run-dir", type=Path, default=run_dir, help=f"nginx's run folder (default {run_dir})")
    parser.add_argument("--key-file", type=Path, default=APP_HOME / "secrets" / "gateway-keys" / "gateway_keys.json",
                        help="the mounted gateway_keys.json (deepfake-gateway-keys Secret)")
    parser.add_argument("--secret-file", type=Path, default=APP_HOME / "secrets" / "gateway-secret" / "secret",
                        help="the mounted gateway secret (deepfake-gateway-secret Secret)")
    parser.add_argument("--worker-processes", type=int, default=2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deepfake_ops.pod", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    sidecar = commands.add_parser("sidecar", help="a detector pod's sidecar: nginx beside TorchServe, and tending")
    _add_nginx_inputs(sidecar, APP_HOME / "sidecar")
    sidecar.add_argument("--torchserve-dir", type=Path, default=APP_HOME / "var" / "run",
                         help="TorchServe's working folder (key_file.json), shared with its container")
    sidecar.add_argument("--history", type=Path, default=APP_HOME / "fleet-state" / "rollout_history.json",
                         help="the desired state (the mounted deepfake-fleet-state ConfigMap)")
    sidecar.add_argument("--name", default=os.environ.get("POD_NAME") or socket.gethostname(),
                         help="the replica's name in headers and logs (default: $POD_NAME, else the host name)")
    sidecar.add_argument("--model", default=DEFAULT_MODEL_NAME)
    sidecar.add_argument("--listen", default="0.0.0.0", help="the sidecar's address (default 0.0.0.0)")
    sidecar.add_argument("--inference-port", type=int, default=SIDECAR_INFERENCE_PORT)
    sidecar.add_argument("--management-port", type=int, default=SIDECAR_MANAGEMENT_PORT)
    sidecar.add_argument("--torchserve-inference-port", type=int, default=8080)
    sidecar.add_argument("--torchserve-management-port", type=int, default=8081)
    sidecar.add_argument("--workers", type=int, help="initial workers of a version it registers (default: "
                                                     "the archive's)")
    sidecar.add_argument("--renew-before", type=float, default=RENEW_BEFORE_S, metavar="SECONDS")
    sidecar.add_argument("--interval", type=float, default=1.0, metavar="SECONDS")

    gateway = commands.add_parser("gateway", help="the gateway in front of every ready detector pod")
    _add_nginx_inputs(gateway, APP_HOME / "gateway")
    gateway.add_argument("--discover", required=True, metavar="SERVICE:PORT",
                         help="the detector's headless Service and its sidecars' inference port")
    gateway.add_argument("--host", default="0.0.0.0")
    gateway.add_argument("--port", type=int, default=GATEWAY_PORT)
    gateway.add_argument("--tls-certificate", type=Path, help="PEM certificate: the gateway then speaks HTTPS only")
    gateway.add_argument("--tls-key", type=Path, help="its private key (default: in the certificate's file)")
    gateway.add_argument("--interval", type=float, default=5.0, metavar="SECONDS", help="how often to re-resolve")

    probe = commands.add_parser("ready", help="exit 0 only while the sidecar has its replica in service")
    probe.add_argument("--run-dir", type=Path, default=APP_HOME / "sidecar")
    probe.add_argument("--max-age", type=float, default=READY_MAX_AGE_S, metavar="SECONDS",
                       help="how old the sidecar's last report may be")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if args.command == "ready":
        healthy, detail = ready(args.run_dir, args.max_age)
        print(detail)
        return 0 if healthy else 1

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        if args.command == "sidecar":
            Sidecar(args.run_dir, args.torchserve_dir, args.history, args.key_file, args.secret_file, args.name,
                    args.model, args.listen, args.inference_port, args.management_port,
                    args.torchserve_inference_port, args.torchserve_management_port, args.workers,
                    args.renew_before, args.interval, args.worker_processes).run()
        else:
            service, _, port = args.discover.rpartition(":")
            if not service or not port.isdigit():
                raise PodError(f"--discover {args.discover}: expected SERVICE:PORT")
            settings = GatewaySettings(args.host, args.port, args.tls_certificate, args.tls_key,
                                       worker_processes=args.worker_processes, serve_sidecars=False)
            GatewayRole(args.run_dir, service, int(port), args.key_file, args.secret_file, settings,
                        args.interval).run()
    except (PodError, GatewayError, KeyFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
