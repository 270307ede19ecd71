"""Where a fleet's replicas are: the layout ``make serve REPLICAS=N`` writes, a list of URLs, or a cluster's
headless Service; and the one place that knows a fleet's folder.

    .run/fleet/fleet.json             replicas (ports, run folders), the gateway's address, the model
    .run/fleet/rollout_history.json   the desired state: versions and default (deepfake_ops.rollout)
    .run/fleet/gateway_keys.json      the gateway's hashed client keys (deepfake_ops.gateway_keys)
    .run/fleet/gateway/               nginx's rendered configuration, logs and temp folders
    .run/fleet/replica-K/             each TorchServe's run folder (config, key file, logs)
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deepfake_detector.archive import DEFAULT_MODEL_NAME

from .gateway import GATEWAY_PORT
from .gateway_keys import KEY_FILE_NAME
from .paths import HISTORY_FILE, MODEL_STORE, RUN_DIR
from .ports import free_port
from .torchserve import Endpoint, TorchServeClient, TorchServeInstance

FLEET_DIR = RUN_DIR / "fleet"
LAYOUT_FILE = "fleet.json"
REPORT_FILE = "keeper.json"
BASE_PORT = 8100
"""Replica K listens on 8100 + 10 K (inference), + 1 (management), + 2 (metrics); its sidecar on + 3, + 4."""


@dataclass
class Replica:
    """One TorchServe the rollout drives, by the name its messages and ``status`` use."""

    name: str
    client: TorchServeClient


class LayoutError(RuntimeError):
    """No fleet where one was looked for, or replicas that could not be found."""


@dataclass(frozen=True)
class ReplicaSpec:
    name: str
    inference_port: int
    management_port: int
    metrics_port: int
    sidecar_inference_port: int
    sidecar_management_port: int


@dataclass
class FleetLayout:
    """A fleet on one machine, as ``fleet.json`` records it."""

    run_dir: Path
    replicas: list[ReplicaSpec]
    model: str = DEFAULT_MODEL_NAME
    model_store: Path = MODEL_STORE
    start_version: str = "1.0"
    gateway_host: str = "127.0.0.1"
    gateway_port: int = GATEWAY_PORT
    tls_certificate: str | None = None
    tls_key: str | None = None
    token_expiration_min: float | None = None
    """TorchServe's key lifetime (its default is 60 minutes); tests shorten it to see renewals."""
    renew_before_s: float = 300.0
    workers: int = 1
    extra_properties: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # TorchServe runs in its replica's folder and nginx in its own: every path they are given is absolute.
        self.run_dir = Path(self.run_dir).resolve()
        self.model_store = Path(self.model_store).resolve()

    @classmethod
    def plan(cls, run_dir: Path, count: int, free_ports: bool = False, **options: object) -> FleetLayout:
        """``count`` replicas on fixed ports (``BASE_PORT``), or on free ones (tests)."""
        specs = []
        for number in range(1, count + 1):
            ports = [free_port() for _ in range(5)] if free_ports else \
                [BASE_PORT + 10 * number + offset for offset in range(5)]
            specs.append(ReplicaSpec(f"replica-{number}", *ports))
        if free_ports:
            options.setdefault("gateway_port", free_port())
        return cls(Path(run_dir), specs, **options)  # type: ignore[arg-type]

    @property
    def path(self) -> Path:
        return self.run_dir / LAYOUT_FILE

    @property
    def history_path(self) -> Path:
        return self.run_dir / HISTORY_FILE

    @property
    def key_file(self) -> Path:
        return self.run_dir / KEY_FILE_NAME

    @property
    def report_path(self) -> Path:
        """What the fleet's keeper says of each replica (``deepfake_ops.fleet``), rewritten every half second."""
        return self.run_dir / REPORT_FILE

    def starting(self) -> list[str]:
        """The replicas the keeper has out of service until they join at the desired state."""
        try:
            report = json.loads(self.report_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return []
        return [name for name, state in report.get("replicas", {}).items() if state.get("phase") == "starting"]

    @property
    def gateway_dir(self) -> Path:
        return self.run_dir / "gateway"

    @property
    def gateway_url(self) -> str:
        return f"{'https' if self.tls_certificate else 'http'}://{self.gateway_host}:{self.gateway_port}"

    def instance(self, spec: ReplicaSpec) -> TorchServeInstance:
        properties = dict(self.extra_properties)
        if self.token_expiration_min is not None:
            properties["token_expiration_min"] = f"{self.token_expiration_min:g}"
        return TorchServeInstance(self.run_dir / spec.name, Path(self.model_store), spec.inference_port,
                                  spec.management_port, spec.metrics_port, extra_properties=properties)

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data["run_dir"], data["model_store"] = str(self.run_dir), str(self.model_store)
        self.path.write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, run_dir: Path = FLEET_DIR) -> FleetLayout:
        path = Path(run_dir) / LAYOUT_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LayoutError(f"no fleet in {run_dir}: start one with `make serve REPLICAS=N`") from None
        data["replicas"] = [ReplicaSpec(**spec) for spec in data["replicas"]]
        data["run_dir"], data["model_store"] = Path(data["run_dir"]), Path(data["model_store"])
        return cls(**data)


def replicas_of(layout: FleetLayout, skip: list[str] | None = None) -> list[Replica]:
    """The fleet's replicas on this machine (but those in ``skip``), each through its own run folder (config and
    key file)."""
    return [Replica(spec.name, TorchServeClient(layout.instance(spec).endpoint)) for spec in layout.replicas
            if spec.name not in (skip or [])]


def replicas_at(urls: list[str], operator_key: str, model_store: Path, run_dir: Path) -> list[Replica]:
    """Replicas by their sidecars' management URLs; the sidecar takes the operator key and adds the
    replica's own TorchServe keys (it routes /predictions/ to the replica's inference side)."""
    replicas = []
    for url in urls:
        url = url.rstrip("/")
        endpoint = Endpoint(url, url, Path(model_store), Path(run_dir), tokens_from_environment=False,
                            fixed_token=operator_key)
        replicas.append(Replica(url.split("//", 1)[-1], TorchServeClient(endpoint)))
    return replicas


def discover(service: str, port: int) -> list[str]:
    """The sidecar URLs of every ready pod behind a headless Service (its DNS name has one A record per ready
    pod), sorted so that every run walks them in the same order."""
    try:
        answers = socket.getaddrinfo(service, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise LayoutError(f"cannot resolve {service}: {error} (run inside the cluster, or pass --replica URL)") \
            from None
    addresses = sorted({answer[4][0] for answer in answers})
    if not addresses:
        raise LayoutError(f"{service} has no ready pod")
    return [f"http://{address}:{port}" for address in addresses]
