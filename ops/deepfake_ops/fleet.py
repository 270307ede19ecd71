"""A fleet on one machine: N TorchServe replicas behind the gateway, tended by one keeper process.

    deepfake-fleet start --replicas 3   # replicas, gateway and keeper; waits until every replica serves
    deepfake-fleet status               # each replica's phase, restarts and key renewals
    deepfake-fleet renew                # renew every replica's TorchServe keys now (drained, one by one)
    deepfake-fleet stop                 # the keeper stops the gateway and the replicas; waits for all
    deepfake-fleet keep                 # the keeper itself, in the foreground (start runs it)

The keeper does on one machine what a cluster does with its kubelet, readiness probes and sidecars
(``deploy/deepfake-fleet.yaml``):

* a replica whose TorchServe exits is started again, and it **joins** only once it serves the desired state
  (``rollout_history.json``: the versions and the default the rollout last set), registering what it
  lacks and setting the default, so a replica that comes back (or a new one) never serves an old default;
* only replicas in service take requests (a sidecar whose replica is not answers 503, and the gateway sends
  the request to the next); one that stops answering is taken out;
* each replica's TorchServe keys are renewed before they expire (TorchServe's last 60 minutes): the replica
  is first drained (its sidecar stops taking requests, and the keeper waits until every request it took is
  answered: no connection to TorchServe is left open), so no request ever reaches it with a key that has
  just stopped working; then its sidecar gets the new keys. SIGUSR1
  renews every replica's keys now, one after the other.

All of it through the replicas' state files, never a reload: nginx reloads only when the keys change.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
from deepfake_detector.archive import DEFAULT_MODEL_NAME, archive_file_name

from .gateway import GATEWAY_PORT, Gateway, GatewayError, GatewaySettings, ReplicaRoute, ReplicaState
from .gateway_keys import GatewayKeys
from .paths import MODEL_STORE
from .replicas import FLEET_DIR, FleetLayout, LayoutError, ReplicaSpec
from .rollout import RolloutError, RolloutHistory, default_version, registered_versions, set_default, worker_states
from .torchserve import (
    ServerError,
    ServerRefusal,
    TorchServeClient,
    TorchServeInstance,
    live_group_leader,
    read_keys,
)

logger = logging.getLogger("deepfake_ops.fleet")
FIRST_KEY_NAME = "local"
"""The client key a new fleet makes when its key file has none."""
KEEPER_PID_FILE = "keeper.pid"
FAILURES_BEFORE_OUT = 3
RESTART_BACKOFF_MAX_S = 60.0
"""A TorchServe that keeps exiting is started again after 2, 4, 8 ... seconds, at most this long."""
HEALTH_TIMEOUT_S = 10.0
"""A replica busy loading a version on a loaded machine answers slowly; only silence this long is a failure."""
DRAIN_TIMEOUT_S = 30.0
"""How long a drain waits for the connections to the replica to close. What must not overlap a renewal is a
request still arriving: TorchServe checks a key once a request's whole body has arrived, which on a loaded
machine was seen 10 s after the sidecar sent it. A request that takes longer (a long video) passed its check
long before; an idle keep-alive connection has nothing to check."""


@dataclass
class ReplicaPhase:
    """What the keeper knows of one replica; ``keeper.json`` shows it."""

    phase: str = "starting"
    """starting (not in the upstream until it serves the desired state), in_service, or draining."""
    restarts: int = 0
    renewals: int = 0
    failures: int = 0
    problem: str | None = None
    since: float = field(default_factory=time.time)


class FleetKeeper:
    """Starts the replicas and the gateway, then tends them until SIGTERM (see the module's docstring)."""

    def __init__(self, layout: FleetLayout, interval_s: float = 0.5) -> None:
        self.layout = layout
        self.interval_s = interval_s
        self.gateway = Gateway(layout.gateway_dir)
        self.settings = GatewaySettings(layout.gateway_host, layout.gateway_port,
                                        Path(layout.tls_certificate) if layout.tls_certificate else None,
                                        Path(layout.tls_key) if layout.tls_key else None)
        self.instances = {spec.name: layout.instance(spec) for spec in layout.replicas}
        self.states = {spec.name: ReplicaPhase() for spec in layout.replicas}
        self.published: dict[str, tuple[str, str]] = {}
        self.stopping = False
        self.renew_requested = False

    # ------------------------------------------------------------------------------------------ loop

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop_soon)
        signal.signal(signal.SIGINT, self._stop_soon)
        signal.signal(signal.SIGUSR1, self._renew_soon)
        history = RolloutHistory.load(self.layout.history_path)
        history.begin(self.layout.model, self.layout.start_version)
        history.save()
        try:
            for spec in self.layout.replicas:
                self._start_replica(spec)
                self._publish(spec)
            self._render()
            self.gateway.start()
            logger.info("gateway at %s; %d replicas starting", self.settings.url, len(self.layout.replicas))
            while not self.stopping:
                for spec in self.layout.replicas:
                    if not self.stopping:
                        self._tend(spec)
                if self.renew_requested:
                    self.renew_requested = False
                    for spec in self.layout.replicas:
                        if self.states[spec.name].phase == "in_service" and not self.stopping:
                            self._renew(spec)
                self._report()
                time.sleep(self.interval_s)
        finally:
            self.gateway.stop()
            for instance in self.instances.values():
                instance.stop()
            self._report(stopped=True)
            logger.info("fleet stopped")

    def _stop_soon(self, *_: Any) -> None:
        self.stopping = True

    def _renew_soon(self, *_: Any) -> None:
        self.renew_requested = True

    def _tend(self, spec: ReplicaSpec) -> None:
        instance, state = self.instances[spec.name], self.states[spec.name]
        try:
            if instance.pid() is None:
                wait_s = min(RESTART_BACKOFF_MAX_S, 2.0 ** min(state.restarts, 10)) if state.restarts else 0.0
                if state.phase != "starting" or time.time() - state.since >= wait_s:
                    self._out(spec, "its TorchServe exited; starting it again")
                    state.restarts += 1
                    self._start_replica(spec)
                return
            if state.phase == "starting":
                if self._joined(spec):
                    self._set_phase(spec, "in_service", None)
                    state.failures = 0
                    self._publish(spec)
                    logger.info("%s joined the fleet", spec.name)
                return
            if not self._healthy(instance):
                state.failures += 1
                if state.failures >= FAILURES_BEFORE_OUT:
                    self._out(spec, "it stopped answering its health check")
                return
            state.failures = 0
            if instance.keys_expire_within(self.layout.renew_before_s):
                self._renew(spec)
            elif self._keys_changed(spec):
                logger.info("%s: its keys were renewed outside the keeper; the sidecar takes them", spec.name)
                self._publish(spec)
        except (ServerError, GatewayError, RolloutError, OSError, ValueError, KeyError,
                requests.RequestException) as error:
            state.problem = f"{type(error).__name__}: {error}"
            logger.warning("%s: %s", spec.name, state.problem)

    def _set_phase(self, spec: ReplicaSpec, phase: str, problem: str | None) -> None:
        state = self.states[spec.name]
        state.phase, state.problem, state.since = phase, problem, time.time()

    def _out(self, spec: ReplicaSpec, why: str) -> None:
        """Out of the upstream until it joins again."""
        self._set_phase(spec, "starting", why)
        logger.warning("%s: %s", spec.name, why)
        self._publish(spec)

    # --------------------------------------------------------------------------------------- replicas

    def _start_replica(self, spec: ReplicaSpec) -> None:
        """Start TorchServe with every desired version; the default is set when it joins."""
        _, versions = RolloutHistory.load(self.layout.history_path).desired(self.layout.model)
        archives = [archive_file_name(self.layout.model, version) for version in versions
                    if (Path(self.layout.model_store) / archive_file_name(self.layout.model, version)).exists()]
        self.instances[spec.name].start(archives or [archive_file_name(self.layout.model, self.layout.start_version)])
        self._set_phase(spec, "starting", self.states[spec.name].problem)

    def _joined(self, spec: ReplicaSpec) -> bool:
        instance = self.instances[spec.name]
        if not instance.key_file.exists():
            return False
        return join_step(instance.client(timeout_s=HEALTH_TIMEOUT_S), self.layout.model, self.layout.history_path,
                         self.layout.workers, spec.name)

    def _healthy(self, instance: TorchServeInstance) -> bool:
        return serves(instance.client(timeout_s=HEALTH_TIMEOUT_S), self.layout.model)

    # ------------------------------------------------------------------------------------------- keys

    def _keys_changed(self, spec: ReplicaSpec) -> bool:
        keys = read_keys(self.instances[spec.name].key_file)
        return self.published.get(spec.name) != (keys["inference"], keys["management"])

    def _renew(self, spec: ReplicaSpec) -> None:
        """Drain (when another replica serves), renew both keys, give the sidecar the new ones, serve again."""
        others = [name for name, state in self.states.items() if name != spec.name and state.phase == "in_service"]
        if others:
            self._set_phase(spec, "draining", "renewing its TorchServe keys")
            self._publish(spec)  # the gateway sends its requests to the others from now on
            if not wait_until_idle(spec.inference_port, DRAIN_TIMEOUT_S, stop=lambda: self.stopping):
                logger.warning("%s: requests still open after %.0f s of draining; renewing anyway", spec.name,
                               DRAIN_TIMEOUT_S)
        try:
            self.instances[spec.name].renew_keys()
        except ServerError as error:
            self._out(spec, f"key renewal failed: {error}")
            return
        self.states[spec.name].renewals += 1
        self._set_phase(spec, "in_service", None)
        self._publish(spec)
        logger.info("%s: TorchServe keys renewed (%s)", spec.name,
                    "drained first" if others else "the only replica: not drained")

    # ---------------------------------------------------------------------------------------- gateway

    def _routes(self) -> list[ReplicaRoute]:
        return [ReplicaRoute(spec.name, f"127.0.0.1:{spec.inference_port}", f"127.0.0.1:{spec.management_port}",
                             "127.0.0.1", spec.sidecar_inference_port, spec.sidecar_management_port)
                for spec in self.layout.replicas]

    def _render(self) -> None:
        self.gateway.render(self.settings, self._routes(), GatewayKeys(self.layout.key_file).all())

    def _publish(self, spec: ReplicaSpec) -> None:
        self.published[spec.name] = publish_replica(self.gateway, spec.name, self.instances[spec.name].key_file,
                                                    self.states[spec.name].phase == "in_service")

    def _report(self, stopped: bool = False) -> None:
        report = {"updated": time.time(), "stopped": stopped, "gateway": self.settings.url,
                  "replicas": {name: asdict(state) for name, state in self.states.items()}}
        path = self.layout.report_path
        path.with_suffix(".tmp").write_text(json.dumps(report, indent=1))
        os.replace(path.with_suffix(".tmp"), path)


def publish_replica(gateway: Gateway, replica: str, key_file: Path, in_service: bool) -> tuple[str, str]:
    """Tell the replica's sidecar whether to serve, with the keys in TorchServe's key file now (none while
    TorchServe has not written it); returns the (inference, management) keys published."""
    try:
        keys = read_keys(key_file)
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        keys = {"inference": "", "management": ""}
    gateway.publish(replica, ReplicaState(in_service, keys["inference"], keys["management"]))
    return keys["inference"], keys["management"]


def join_step(client: TorchServeClient, model: str, history_path: Path, workers: int | None = None,
              replica: str = "replica") -> bool:
    """One step towards the desired state (``rollout_history.json``: on one machine the fleet's, in a cluster the
    mounted ConfigMap); True once the replica serves it: every desired version registered with all its workers
    READY, and the desired default set. A missing version is registered without waiting (the next step sees
    it loading)."""
    if not Path(history_path).exists():
        raise RolloutError(f"no desired state at {history_path} (in a cluster: mount the deepfake-fleet-state "
                           "ConfigMap)")
    desired_default, versions = RolloutHistory.load(Path(history_path)).desired(model)
    try:
        registered = registered_versions(client, model)
    except ServerRefusal:
        return False  # still starting
    for version in versions:
        if version not in registered:
            logger.info("%s lacks %s %s: registering it", replica, model, version)
            params: dict[str, Any] = {"url": archive_file_name(model, version), "synchronous": "false"}
            if workers:
                params["initial_workers"] = workers
            client.management("POST", "/models", f"register {version}", params=params,
                              hints={404: f"{archive_file_name(model, version)} is not in this pod's model store"})
            return False
        states = worker_states(registered[version])
        if not states or any(state != "READY" for state in states):
            return False
    if desired_default is not None and default_version(client, model) != desired_default:
        set_default(client, model, desired_default, f"{replica}: set the desired default {desired_default}")
        logger.info("%s: default set to the desired %s", replica, desired_default)
        # A promotion may have landed meanwhile: join only on a default that is still the desired one.
        return RolloutHistory.load(Path(history_path)).desired(model)[0] == desired_default
    return True


def serves(client: TorchServeClient, model: str) -> bool:
    """The model's default version has a READY worker."""
    try:
        described = client.describe(model)[0]
    except (ServerRefusal, IndexError, KeyError):
        return False
    return any(worker.get("status") == "READY" for worker in described.get("workers", []))


def open_connections(port: int) -> int:
    """TCP connections established to a local listening port (this network namespace's /proc/net/tcp*):
    behind a sidecar that opens one per request, the requests a replica has not answered yet."""
    count = 0
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        try:
            lines = table.read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def wait_until_idle(port: int, timeout_s: float, settle_s: float = 0.3,
                    stop: Callable[[], bool] = lambda: False) -> bool:
    """Until nothing is open to ``port`` (after ``settle_s``, for a request let in just before the drain);
    False after ``timeout_s``, or at once when ``stop()`` says the process is stopping."""
    time.sleep(settle_s)
    deadline = time.monotonic() + timeout_s
    while open_connections(port) > 0:
        if time.monotonic() > deadline or stop():
            return False
        time.sleep(0.05)
    return True


# ----------------------------------------------------------------------------------------- start, stop


def read_report(layout: FleetLayout) -> dict[str, Any] | None:
    try:
        return json.loads(layout.report_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def keeper_pid(layout: FleetLayout) -> int | None:
    """The keeper's pid while it runs (it leads its own process group, as TorchServe and nginx do theirs)."""
    return live_group_leader(layout.run_dir / KEEPER_PID_FILE)


def start(layout: FleetLayout, timeout_s: float = 300.0) -> subprocess.Popen[bytes]:
    """Write the layout, start the keeper (which starts the rest), and wait until every replica serves."""
    if keeper_pid(layout) is not None:
        raise LayoutError(f"a fleet from {layout.run_dir} is already running; `make stop` first")
    layout.save()
    layout.report_path.unlink(missing_ok=True)
    with open(layout.run_dir / "keeper.log", "ab") as output:
        keeper = subprocess.Popen([sys.executable, "-m", "deepfake_ops.fleet", "--run-dir", str(layout.run_dir),
                                   "keep"], stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
    (layout.run_dir / KEEPER_PID_FILE).write_text(str(keeper.pid))
    wait_in_service(layout, timeout_s, keeper)
    return keeper


def wait_in_service(layout: FleetLayout, timeout_s: float = 300.0,
                    keeper: subprocess.Popen[bytes] | None = None, names: list[str] | None = None) -> None:
    """Until every replica (or those named) is in service and the gateway answers."""
    deadline = time.monotonic() + timeout_s
    wanted = names or [spec.name for spec in layout.replicas]
    phases: dict[str, str] = {}
    while time.monotonic() < deadline:
        if keeper is not None and keeper.poll() is not None:
            raise LayoutError(f"the fleet keeper exited; see {layout.run_dir / 'keeper.log'}")
        report = read_report(layout) or {"replicas": {}}
        phases = {name: report["replicas"].get(name, {}).get("phase", "?") for name in wanted}
        if all(phase == "in_service" for phase in phases.values()):
            try:
                if requests.get(f"{layout.gateway_url}/healthz", timeout=2, verify=False).status_code == 200:
                    return
            except requests.RequestException:
                pass
        time.sleep(0.3)
    raise LayoutError(f"replicas not in service after {timeout_s:.0f} s: {phases}; see "
                      f"{layout.run_dir / 'keeper.log'} and each replica's logs/")


def stop(layout: FleetLayout, timeout_s: float = 120.0) -> None:
    """Ask the keeper to stop everything; whatever a killed keeper left is stopped from its pid files."""
    pid = keeper_pid(layout)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while keeper_pid(layout) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if keeper_pid(layout) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    Gateway(layout.gateway_dir).stop()
    for spec in layout.replicas:
        layout.instance(spec).stop()
    (layout.run_dir / KEEPER_PID_FILE).unlink(missing_ok=True)
    layout.path.unlink(missing_ok=True)


def example_curl(layout: FleetLayout, key: str | None, model: str) -> str:
    from .server import sample_face_photo

    media = sample_face_photo() or Path("face.jpg")
    return (f'curl -s -H "Authorization: Bearer {key or "$GATEWAY_KEY"}" -H "Content-Type: application/octet-stream" '
            f"--data-binary @{media} {layout.gateway_url}/predictions/{model}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=FLEET_DIR)
    commands = parser.add_subparsers(dest="command", required=True)
    begin = commands.add_parser("start", help="replicas, gateway and keeper; waits until every replica serves")
    begin.add_argument("--replicas", type=int, default=2)
    begin.add_argument("--model", default=DEFAULT_MODEL_NAME)
    begin.add_argument("--version", default="1.0", help="the version a new fleet starts with")
    begin.add_argument("--model-store", type=Path, default=MODEL_STORE)
    begin.add_argument("--gateway-port", type=int, default=GATEWAY_PORT)
    begin.add_argument("--tls-certificate", help="PEM certificate: the gateway then speaks HTTPS only")
    begin.add_argument("--tls-key", help="its private key (default: in the certificate's file)")
    commands.add_parser("stop", help="stop the keeper, the gateway and every replica")
    commands.add_parser("status", help="each replica's phase, restarts and key renewals")
    commands.add_parser("renew", help="renew every replica's TorchServe keys now, one after the other")
    commands.add_parser("keep", help="run the keeper in the foreground")
    args = parser.parse_args(argv)

    try:
        if args.command == "start":
            if args.replicas < 1:
                raise LayoutError("--replicas: at least 1")
            layout = FleetLayout.plan(args.run_dir, args.replicas, model=args.model,
                                      model_store=args.model_store.resolve(), start_version=args.version,
                                      gateway_port=args.gateway_port, tls_certificate=args.tls_certificate,
                                      tls_key=args.tls_key)
            keys = GatewayKeys(layout.key_file)
            made = keys.add(FIRST_KEY_NAME) if not keys.active("client") else None
            print(f"starting {args.replicas} replicas and the gateway from {layout.run_dir} ...", flush=True)
            start(layout)
            print(f"{args.model} is served by {args.replicas} replicas behind {layout.gateway_url}.")
            if made:
                print(f"A client key named '{FIRST_KEY_NAME}' was made (shown once, stored only as a hash): {made}")
            print("\nScore a real face photo:\n\n  " + example_curl(layout, made, args.model) + "\n")
            print("Keys: python -m deepfake_ops.gateway_keys add|revoke|list.  Stop with: make stop")
            return 0
        layout = FleetLayout.load(args.run_dir)
        if args.command == "keep":
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
            FleetKeeper(layout).run()
        elif args.command == "stop":
            stop(layout)
            print("fleet stopped")
        elif args.command == "renew":
            pid = keeper_pid(layout)
            if pid is None:
                raise LayoutError(f"no fleet keeper running from {layout.run_dir}")
            os.kill(pid, signal.SIGUSR1)
            print("the keeper renews every replica's keys now (deepfake-fleet status counts renewals)")
        else:
            report = read_report(layout)
            if report is None or keeper_pid(layout) is None:
                print(f"no fleet keeper running from {layout.run_dir}")
                return 1
            print(f"gateway {report['gateway']}")
            for name, state in report["replicas"].items():
                print(f"  {name:<12}{state['phase']:<12}restarts {state['restarts']:<4}renewals "
                      f"{state['renewals']:<4}{state['problem'] or ''}")
    except (LayoutError, GatewayError, ServerError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
