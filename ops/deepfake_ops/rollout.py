"""Put a model version into service on a running TorchServe, check it, and go back in seconds.

    deepfake-rollout status       # archives in the store beside what the server serves
    deepfake-rollout deploy 2.0   # integrity check, register beside the others, wait READY
    deepfake-rollout verify 2.0   # replay the archive's golden requests on /predictions/NAME/2.0
    deepfake-rollout promote 2.0  # verify, then make 2.0 the default
    deepfake-rollout rollback     # make the previous default the default again
    deepfake-rollout retire 1.0   # unregister a version that is not the default

The server is found through its run folder (``--run-dir``, default ``.run/``, as ``make serve`` starts it):
addresses and model store from its ``config.properties``, tokens from its ``key_file.json`` (or the
``TS_MANAGEMENT_TOKEN`` / ``TS_INFERENCE_TOKEN`` environment variables). Which versions were the default,
in order, is kept in ``RUN_DIR/rollout_history.json``, so ``rollback`` works across invocations.

A fleet (``--fleet .run/fleet``, ``--replica URL``, ``--discover SERVICE:PORT``) gets every step on every
replica: ``deploy`` and ``verify`` on each, ``promote`` only once each has verified and then on each in turn,
``rollback`` everywhere, and ``status`` shows each replica beside the desired state and flags any drift.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepfake_detector.archive import DEFAULT_MODEL_NAME, Archive, ArchiveError, archive_path
from deepfake_detector.verdict import Verdict, VerdictError

from .golden import Tolerances, answer_compute, compare_response, request_body
from .kubernetes import (
    FLEET_STATE_CONFIGMAP,
    FLEET_STATE_KEY,
    ApiAccess,
    KubernetesError,
    read_configmap_entry,
    write_configmap_key,
)
from .paths import HISTORY_FILE, RUN_DIR
from .replicas import FleetLayout, LayoutError, Replica, discover, replicas_at, replicas_of
from .torchserve import Endpoint, ServerError, ServerRefusal, TorchServeClient

HISTORY_EVENTS_KEPT = 200
OPERATOR_KEY_ENV = "DEEPFAKE_OPERATOR_KEY"


class RolloutError(RuntimeError):
    """A rollout step was refused or failed; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------- archives


@dataclass
class ArchiveInfo:
    """What a ``.mar`` in the model store says about itself."""

    path: Path
    version: str
    name: str
    weights_sha256: str
    created: str
    trained: bool
    golden_requests: int

    @classmethod
    def read(cls, path: Path) -> ArchiveInfo:
        archive = Archive(path)
        try:
            manifest, golden = archive.manifest(), archive.golden()
        except ArchiveError as error:
            raise RolloutError(str(error)) from None
        return cls(path, manifest.version, manifest.name, manifest.weights_sha256, manifest.created,
                   manifest.trained, len(golden["requests"]) if golden else 0)


def local_archives(store: Path, name: str) -> list[ArchiveInfo]:
    """Every archive of the model in the store, by version."""
    found = []
    for path in sorted(Path(store).glob(f"{name}-*.mar")):
        try:
            info = ArchiveInfo.read(path)
        except RolloutError:
            continue
        if info.name == name:  # deepfake_detector-*.mar also matches deepfake_detector-small-1.0.mar
            found.append(info)
    return sorted(found, key=lambda info: _version_key(info.version))


def check_integrity(path: Path, name: str, version: str) -> ArchiveInfo:
    """Refuse an archive whose weights are not the ones its manifest names, or that is another version."""
    try:
        Archive(path).verify(name, version)
    except ArchiveError as error:
        raise RolloutError(f"{error}; not deployed") from None
    return ArchiveInfo.read(path)


# ------------------------------------------------------------------------------------------------ history


@dataclass
class ConfigMapState:
    """A cluster's desired state: one key of a ConfigMap, read and written through the API from inside a pod
    (``deepfake_ops.kubernetes``); a write made from a stale read is refused (409), never lost."""

    namespace: str
    name: str = FLEET_STATE_CONFIGMAP
    key: str = FLEET_STATE_KEY
    api: ApiAccess | None = None
    """None: the pod's own service account (``ApiAccess.in_cluster``)."""
    read_version: list[str] = field(default_factory=list, compare=False)

    @classmethod
    def parse(cls, text: str) -> ConfigMapState:
        """``configmap:NAMESPACE/NAME`` (the key is rollout_history.json)."""
        namespace, _, name = text.removeprefix("configmap:").partition("/")
        if not namespace or not name:
            raise RolloutError(f"{text}: expected configmap:NAMESPACE/NAME")
        return cls(namespace, name)

    def read(self) -> str:
        try:
            text, version = read_configmap_entry(self.namespace, self.name, self.key, self.api)
        except KubernetesError as error:
            raise RolloutError(str(error)) from None
        self.read_version[:] = [version]
        return text

    def write(self, text: str) -> None:
        try:
            version = write_configmap_key(self.namespace, self.name, self.key, text, self.api,
                                          (self.read_version or [None])[-1])
        except KubernetesError as error:
            raise RolloutError(f"{error}; run the step again") from None
        self.read_version[:] = [version]

    def __str__(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name} ({self.key})"


@dataclass
class RolloutHistory:
    """The versions that were the default, oldest first, per model, plus a log of every step."""

    path: Path | ConfigMapState
    defaults: dict[str, list[str]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    """The versions deployed with this tool and not retired, per model: with the last default, a fleet's
    desired state."""

    @classmethod
    def load(cls, path: Path | ConfigMapState) -> RolloutHistory:
        if isinstance(path, Path) and not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read() if isinstance(path, ConfigMapState) else path.read_text())
            return cls(path, {k: list(v) for k, v in data["defaults"].items()}, list(data.get("events", [])),
                       {k: list(v) for k, v in data.get("registered", {}).items()})
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
            raise RolloutError(f"{path} is not a rollout history; move it away (rollback then needs an "
                               "explicit `promote VERSION`)") from None

    def record(self, model: str, action: str, version: str, previous: str | None) -> None:
        self.events.append({"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                            "model": model, "action": action, "version": version,
                            "previous_default": previous})
        self.events = self.events[-HISTORY_EVENTS_KEPT:]

    def desired(self, model: str) -> tuple[str | None, list[str]]:
        """The default and the versions every replica should serve."""
        stack = self.defaults.get(model, [])
        return (stack[-1] if stack else None), sorted(self.registered.get(model, []), key=_version_key)

    def want_registered(self, model: str, version: str) -> None:
        versions = self.registered.setdefault(model, [])
        if version not in versions:
            versions.append(version)

    def forget_registered(self, model: str, version: str) -> None:
        self.registered[model] = [v for v in self.registered.get(model, []) if v != version]

    def begin(self, model: str, version: str) -> None:
        """A fleet's first desired state: the version it starts with, as its default."""
        if not self.defaults.get(model):
            self.defaults[model] = [version]
            self.want_registered(model, version)

    def save(self) -> None:
        text = json.dumps({"defaults": self.defaults, "registered": self.registered, "events": self.events},
                          indent=1)
        if isinstance(self.path, ConfigMapState):
            self.path.write(text)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(text)
        os.replace(temporary, self.path)


# ------------------------------------------------------------------------------------------------- server


def registered_versions(client: TorchServeClient, name: str) -> dict[str, dict[str, Any]]:
    """The server's own description of every registered version (``GET /models/NAME/all``), by version."""
    try:
        described = client.describe_all(name)
    except ServerRefusal as refusal:
        if refusal.status == 404:
            return {}
        raise
    return {str(entry["modelVersion"]): entry for entry in described}


def default_version(client: TorchServeClient, name: str) -> str | None:
    """``GET /models/NAME`` describes the default version only (``/all`` has no default flag)."""
    try:
        described = client.describe(name)
    except ServerRefusal as refusal:
        if refusal.status == 404:
            return None
        raise
    return str(described[0]["modelVersion"]) if described else None


def worker_states(entry: dict[str, Any]) -> list[str]:
    return [str(worker.get("status")) for worker in entry.get("workers", [])]


# ----------------------------------------------------------------------------------------------- commands


@dataclass
class Rollout:
    """The rollout steps for one model name, on one server or on every replica of a fleet.

    On a fleet the desired state (the versions every replica registers and the default) is written to the
    history file before the replicas are changed, so a replica that joins meanwhile comes up with it
    (``deepfake_ops.fleet``); ``promote`` changes a default only once every replica has verified the version.
    """

    replicas: list[Replica]
    store: Path
    history_path: Path | ConfigMapState
    name: str = DEFAULT_MODEL_NAME
    log: Any = print
    fleet: bool = False

    @classmethod
    def for_server(cls, client: TorchServeClient, name: str = DEFAULT_MODEL_NAME, log: Any = print) -> Rollout:
        return cls([Replica("server", client)], client.endpoint.model_store,
                   client.endpoint.run_dir / HISTORY_FILE, name, log)

    @property
    def client(self) -> TorchServeClient:
        return self.replicas[0].client

    def _on(self, replica: Replica) -> str:
        return f"{replica.name}: " if self.fleet else ""

    # -------------------------------------------------------------------------------------------- status

    def _replica_rows(self, replica: Replica, archives: dict[str, ArchiveInfo]) -> dict[str, Any]:
        try:
            server = registered_versions(replica.client, self.name)
            default = default_version(replica.client, self.name) if server else None
            reachable = None
        except ServerRefusal as refusal:  # still list the archives
            server, default, reachable = {}, None, str(refusal)
        rows = []
        for version in sorted(set(archives) | set(server), key=_version_key):
            info, entry = archives.get(version), server.get(version)
            rows.append({
                "version": version,
                "archive": info.path.name if info else None,
                "weights_sha256": info.weights_sha256 if info else None,
                "created": info.created if info else None,
                "trained": info.trained if info else None,
                "golden_requests": info.golden_requests if info else None,
                "registered": entry is not None,
                "workers": worker_states(entry) if entry else [],
                "default": version == default,
            })
        return {"name": replica.name, "server": replica.client.endpoint.management_url,
                "server_error": reachable, "default": default, "versions": rows}

    def status(self) -> dict[str, Any]:
        archives = {info.version: info for info in local_archives(self.store, self.name)}
        history = RolloutHistory.load(self.history_path)
        replicas = [self._replica_rows(replica, archives) for replica in self.replicas]
        report = {"model": self.name, "model_store": str(self.store), **{k: replicas[0][k] for k in (
                  "server", "server_error", "default", "versions")},
                  "default_history": history.defaults.get(self.name, []), "history_file": str(self.history_path)}
        if self.fleet:
            desired_default, desired_versions = history.desired(self.name)
            report.update({"replicas": replicas, "desired": {"default": desired_default,
                                                              "versions": desired_versions},
                           "drift": drift(replicas, desired_default, desired_versions)})
            report["server_error"] = next((r["server_error"] for r in replicas if r["server_error"]), None)
        return report

    # -------------------------------------------------------------------------------------------- deploy

    def deploy(self, version: str, workers: int = 1, timeout_s: float = 300.0) -> dict[str, Any]:
        path = archive_path(self.store, self.name, version)
        info = check_integrity(path, self.name, version)
        self.log(f"{path.name}: weights sha256 {info.weights_sha256[:16]}... matches its manifest")
        if info.golden_requests == 0:
            self.log(f"warning: {path.name} has no golden requests; `verify {version}` will refuse it")
        missing = [r for r in self.replicas if version not in registered_versions(r.client, self.name)]
        if not missing:
            raise RolloutError(f"{self.name} {version} is already registered; `verify {version}` / "
                               f"`promote {version}` it, or `retire {version}` first to load it again")
        if self.fleet and len(missing) < len(self.replicas):
            self.log(f"{version} is registered on some replicas already; registering it on "
                     f"{', '.join(r.name for r in missing)}")
        history = RolloutHistory.load(self.history_path)
        previous_default, wanted_before = history.desired(self.name)
        if self.fleet:  # before the replicas: one that joins meanwhile loads it
            history.want_registered(self.name, version)
            history.save()
        entry: dict[str, Any] = {}
        try:
            for replica in missing:
                entry = self._register(replica, path, version, workers, timeout_s)
        except (RolloutError, ServerRefusal):
            if self.fleet and version not in wanted_before:  # a failed deploy leaves the desired state as it was
                history = RolloutHistory.load(self.history_path)
                history.forget_registered(self.name, version)
                history.save()
                self.log(f"{version} is no longer desired; `status` shows any replica that registered it, "
                         f"`retire {version}` unregisters it there")
            raise
        history = RolloutHistory.load(self.history_path)
        history.want_registered(self.name, version)
        history.record(self.name, "deploy", version,
                       previous_default if self.fleet else default_version(self.client, self.name))
        history.save()
        return entry

    def _register(self, replica: Replica, path: Path, version: str, workers: int,
                  timeout_s: float) -> dict[str, Any]:
        self.log(f"{self._on(replica)}registering {self.name} {version} with {workers} worker(s) ...")
        started = time.monotonic()
        replica.client.management(
            "POST", "/models", f"{self._on(replica)}register {path.name}",
            params={"url": path.name, "initial_workers": workers, "synchronous": "true"},
            hints={404: f"the server's model store must hold {path.name} (is it serving {self.store}?)",
                   409: f"`retire {version}` first to load it again"},
            timeout_s=timeout_s,
        )
        try:
            entry = replica.client.wait_ready(self.name, version, timeout_s)
        except ServerError as error:
            raise RolloutError(f"{self._on(replica)}{error}") from None
        self.log(f"{self._on(replica)}{self.name} {version} READY ({len(worker_states(entry))} worker(s)) in "
                 f"{time.monotonic() - started:.1f} s; the default is still "
                 f"{default_version(replica.client, self.name)}")
        return entry

    # -------------------------------------------------------------------------------------------- verify

    def verify(self, version: str) -> list[dict[str, Any]]:
        """Replay the archive's golden requests on ``/predictions/NAME/VERSION`` of every replica; raise on
        any difference."""
        path = archive_path(self.store, self.name, version)
        if not path.exists():
            raise RolloutError(f"no archive {path}: verify compares the server with its golden requests")
        try:
            golden = Archive(path).golden()
        except ArchiveError as error:
            raise RolloutError(str(error)) from None
        if not golden:
            raise RolloutError(f"{path.name} has no golden requests (built with --no-golden); rebuild it "
                               f"with `make mar VERSION={version}`")
        results = []
        for replica in self.replicas:
            results += self._verify_on(replica, version, golden)
        return results

    def _verify_on(self, replica: Replica, version: str, golden: dict[str, Any]) -> list[dict[str, Any]]:
        on = self._on(replica)
        entry = registered_versions(replica.client, self.name).get(version)
        if entry is None:
            raise RolloutError(f"{on}{self.name} {version} is not registered on the server: "
                               f"`deploy {version}` first")
        if not worker_states(entry) or any(state != "READY" for state in worker_states(entry)):
            raise RolloutError(f"{on}{self.name} {version} has workers {worker_states(entry)}, not all READY")
        results, failures, computes = [], [], set()
        for item in golden["requests"]:
            try:
                body = request_body(item)
            except (FileNotFoundError, ValueError) as error:
                raise RolloutError(f"cannot verify: {error}") from None
            answer = replica.client.predict(self.name, version, body)
            compute = answer_compute(answer.body)
            tolerances = Tolerances.recorded(golden, compute)
            computes.add(f"{compute}: within {tolerances.probability:g}")
            problems = compare_response(item["status"], item["response"], answer.status, answer.body,
                                        tolerances)
            results.append({"replica": replica.name, "name": item["name"], "status": answer.status,
                            "problems": problems, "ms": round(1000 * answer.seconds, 1)})
            summary = _summary(answer.status, answer.body)
            if problems:
                failures.append(item["name"])
                self.log(f"  {on}MISMATCH {item['name']}: {summary}")
                for problem in problems:
                    self.log(f"           {problem}")
            else:
                self.log(f"  {on}ok       {item['name']}: {summary} ({1000 * answer.seconds:.0f} ms)")
        if failures:
            raise RolloutError(f"{on}{self.name} {version} FAILED verification on {len(failures)} of "
                               f"{len(results)} golden requests ({', '.join(failures)}): the served version "
                               "does not answer as its archive did at build time; do not promote it")
        self.log(f"{on}{self.name} {version} verified: {len(results)} golden requests match (fake probabilities "
                 f"{', '.join(sorted(computes))})")
        return results

    # ---------------------------------------------------------------------------------- promote, rollback

    def _defaults(self) -> dict[str, str | None]:
        return {replica.name: default_version(replica.client, self.name) for replica in self.replicas}

    def promote(self, version: str) -> str | None:
        """Verify on every replica, then make ``version`` the default on each in turn; returns the previous
        default."""
        history = RolloutHistory.load(self.history_path)
        defaults = self._defaults()
        previous = history.desired(self.name)[0] if self.fleet else defaults[self.replicas[0].name]
        if all(default == version for default in defaults.values()):
            raise RolloutError(f"{self.name} {version} is already the default")
        self.verify(version)
        history = RolloutHistory.load(self.history_path)
        stack = history.defaults.setdefault(self.name, [])
        if previous is not None and (not stack or stack[-1] != previous):
            stack.append(previous)
        stack.append(version)
        history.record(self.name, "promote", version, previous)
        self._apply(history, version, f"promote {version}")
        self.log(f"{self.name} default: {previous} -> {version} (rollback returns to {previous})"
                 + (f" on {len(self.replicas)} replicas" if self.fleet else ""))
        return previous

    def rollback(self) -> str:
        """Make the version that was the default before the current one the default again (everywhere)."""
        history = RolloutHistory.load(self.history_path)
        stack = history.defaults.get(self.name, [])
        current = stack[-1] if self.fleet and stack else default_version(self.client, self.name)
        if len(stack) < 2:
            raise RolloutError(
                f"no previous default of {self.name} is recorded in {self.history_path} (rollback only "
                f"undoes promotions made with this tool); the default is {current}: choose a version "
                "explicitly with `promote VERSION`")
        if stack[-1] != current:
            raise RolloutError(
                f"the server's default is {current}, but {self.history_path} says {stack[-1]} (the server "
                "was restarted or the default changed outside this tool); choose explicitly with "
                "`promote VERSION`")
        target = stack[-2]
        for replica in self.replicas:
            if target not in registered_versions(replica.client, self.name):
                raise RolloutError(f"{self._on(replica)}the previous default {self.name} {target} is no longer "
                                   f"registered (retired?); `deploy {target}` again, or `promote` another version")
        stack.pop()
        history.record(self.name, "rollback", target, current)
        self._apply(history, target, f"roll back to {target}")
        self.log(f"{self.name} default: {current} -> {target} (rolled back)"
                 + (f" on {len(self.replicas)} replicas" if self.fleet else ""))
        return target

    def retire(self, version: str) -> None:
        history = RolloutHistory.load(self.history_path)
        holding = [r for r in self.replicas if version in registered_versions(r.client, self.name)]
        if not holding and self.fleet and version in history.desired(self.name)[1]:
            history.forget_registered(self.name, version)  # desired, held by no replica: no longer desired
            history.record(self.name, "retire", version, history.desired(self.name)[0])
            history.save()
            self.log(f"{self.name} {version} was desired but registered nowhere: no longer desired")
            return
        if not holding:
            versions = registered_versions(self.client, self.name)
            raise RolloutError(f"{self.name} {version} is not registered; registered: {sorted(versions)}")
        if version in self._defaults().values() or (self.fleet and history.desired(self.name)[0] == version):
            raise RolloutError(f"{self.name} {version} is the default and serves /predictions/{self.name}: "
                               "`promote` or `rollback` to another version first")
        history.forget_registered(self.name, version)
        history.save()
        for replica in holding:
            replica.client.management(
                "DELETE", f"/models/{self.name}/{version}", f"{self._on(replica)}unregister {self.name} {version}",
                hints={403: "it became the default meanwhile; promote another version first"},
            )
        history = RolloutHistory.load(self.history_path)
        history.record(self.name, "retire", version, default_version(self.client, self.name))
        history.save()
        self.log(f"{self.name} {version} unregistered; still registered: "
                 f"{sorted(registered_versions(self.client, self.name), key=_version_key)}")

    def _apply(self, history: RolloutHistory, version: str, action: str) -> None:
        """A fleet's desired default is written before the replicas change (one that joins meanwhile takes
        it); one server's history records what its server did, after."""
        if self.fleet:
            history.save()
        self._set_default_everywhere(version, action)
        if not self.fleet:
            history.save()

    def _set_default_everywhere(self, version: str, action: str) -> None:
        """Each replica in turn; a replica that refuses stops the rollout with what every replica serves."""
        for replica in self.replicas:
            try:
                set_default(replica.client, self.name, version, f"{self._on(replica)}{action}")
            except (ServerRefusal, RolloutError) as error:
                if not self.fleet:
                    raise
                raise RolloutError(f"{error}; defaults now {self._defaults_text()}: run it again, or "
                                   "`rollback`") from None
            if self.fleet:
                self.log(f"{replica.name}: default {version}")

    def _defaults_text(self) -> str:
        try:
            return ", ".join(f"{name} {default}" for name, default in self._defaults().items())
        except ServerRefusal as refusal:
            return f"(not all known: {refusal})"


def set_default(client: TorchServeClient, name: str, version: str, action: str) -> None:
    client.management("PUT", f"/models/{name}/{version}/set-default", action,
                      hints={404: f"`deploy {version}` first"})
    now = default_version(client, name)
    if now != version:
        raise RolloutError(f"{action}: the server accepted, but its default is {now}")


def drift(replicas: list[dict[str, Any]], desired_default: str | None, desired_versions: list[str]) -> list[str]:
    """What differs between each replica (as ``status`` read it) and the desired state, one line each."""
    problems = []
    for replica in replicas:
        if replica["server_error"]:
            problems.append(f"{replica['name']}: not reachable ({replica['server_error']})")
            continue
        if desired_default is not None and replica["default"] != desired_default:
            problems.append(f"{replica['name']}: default {replica['default']}, desired {desired_default}")
        registered = {row["version"] for row in replica["versions"] if row["registered"]}
        if missing := sorted(set(desired_versions) - registered, key=_version_key):
            problems.append(f"{replica['name']}: missing {', '.join(missing)}")
        if extra := sorted(registered - set(desired_versions), key=_version_key):
            problems.append(f"{replica['name']}: registered outside the rollout: {', '.join(extra)}")
    return problems


def _summary(status: int, body: Any) -> str:
    if status != 200:
        return f"HTTP {status} {body.get('error') if isinstance(body, dict) else body}"
    try:
        verdict = Verdict.from_json(body)
    except VerdictError as error:
        return f"not a verdict ({error})"
    extra = (f", {len(verdict.faces)} face(s)" if verdict.media.type == "image"
             else f", frames {verdict.sampled_frame_indices}")
    return f"{verdict.label} p_fake={verdict.fake_probability:.6f}{extra}"


def _version_key(version: str) -> tuple[Any, ...]:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in version.split("."))


def _print_rows(rows: list[dict[str, Any]], indent: str = "  ") -> None:
    print(f"{indent}{'version':<9}{'default':<9}{'registered':<12}{'workers':<16}{'trained':<9}{'golden':<8}"
          f"{'weights sha256':<19}created")
    for row in rows:
        workers = ",".join(row["workers"]) or "-"
        sha = (row["weights_sha256"] or "(no archive)")[:16]
        trained = {True: "yes", False: "no", None: "?"}[row["trained"]]
        golden = "-" if row["golden_requests"] is None else str(row["golden_requests"])
        default, registered = "*" if row["default"] else "", "yes" if row["registered"] else "no"
        print(f"{indent}{row['version']:<9}{default:<9}{registered:<12}{workers:<16}{trained:<9}{golden:<8}"
              f"{sha:<19}{row['created'] or '-'}")


def print_status(report: dict[str, Any]) -> None:
    history = " -> ".join(report["default_history"]) or "(none recorded)"
    if "replicas" not in report:
        print(f"model {report['model']}  store {report['model_store']}  server {report['server']}")
        _print_rows(report["versions"])
        print(f"default {report['default']}; promotions recorded in {report['history_file']}: {history}")
        return
    desired = report["desired"]
    print(f"model {report['model']}  store {report['model_store']}  {len(report['replicas'])} replicas; desired: "
          f"default {desired['default']}, versions {', '.join(desired['versions']) or '-'}")
    for replica in report["replicas"]:
        state = f"error: {replica['server_error']}" if replica["server_error"] else f"default {replica['default']}"
        print(f"{replica['name']}  {replica['server']}  {state}")
        _print_rows([row for row in replica["versions"] if row["registered"]], "    ")
    print(f"promotions recorded in {report['history_file']}: {history}")
    if report["drift"]:
        print("DRIFT (a replica differs from the desired state):")
        for line in report["drift"]:
            print(f"  {line}")
    else:
        print("no drift: every replica serves the desired versions and default")


def make_rollout(args: argparse.Namespace) -> Rollout:
    """The rollout the command line asks for: one server (--run-dir), a fleet on this machine (--fleet),
    or replicas by URL (--replica, --discover) with an operator key."""
    if args.fleet:
        layout = FleetLayout.load(args.fleet)
        # A replica the keeper has out of service joins at the desired state by itself: a step that changes the
        # fleet goes on without it (an emergency rollback must not wait for a crash-looping replica).
        skip = [] if args.command == "status" else layout.starting()
        for name in skip:
            print(f"{name} is out of service (starting): skipped; it joins at the desired state")
        if len(skip) == len(layout.replicas):
            raise RolloutError(f"every replica is out of service; see {layout.run_dir / 'keeper.log'}")
        return Rollout(replicas_of(layout, skip), Path(layout.model_store), layout.history_path, args.name,
                       fleet=True)
    urls = list(args.replica or [])
    if args.discover:
        service, _, port = args.discover.rpartition(":")
        urls += discover(service, int(port))
    if urls:
        key = os.environ.get(OPERATOR_KEY_ENV)
        if not key:
            raise RolloutError(f"--replica/--discover reach the replicas' sidecars: set {OPERATOR_KEY_ENV} to an "
                               "operator key (deepfake-gateway-keys add NAME --operator)")
        store = args.model_store or Endpoint.from_run_dir(args.run_dir).model_store
        state: Path | ConfigMapState = args.run_dir / HISTORY_FILE
        if args.desired_state:
            state = (ConfigMapState.parse(args.desired_state) if args.desired_state.startswith("configmap:")
                     else Path(args.desired_state))
        return Rollout(replicas_at(urls, key, store, args.run_dir), Path(store), state, args.name, fleet=True)
    endpoint = Endpoint.from_run_dir(args.run_dir, args.management_url, args.inference_url, args.model_store)
    return Rollout.for_server(TorchServeClient(endpoint), args.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR,
                        help="the server's run folder: config.properties, key_file.json, rollout history")
    parser.add_argument("--model-store", type=Path, help="default: the one in the run folder's config")
    parser.add_argument("--management-url", help="default: management_address of the run folder's config")
    parser.add_argument("--inference-url", help="default: inference_address of the run folder's config")
    parser.add_argument("--fleet", type=Path, help="a fleet's folder on this machine (make serve REPLICAS=N: "
                                                   ".run/fleet): every replica, the desired state in it")
    parser.add_argument("--replica", action="append", help="a replica's sidecar management URL (repeatable); "
                        f"the desired state is kept in --run-dir; needs {OPERATOR_KEY_ENV}")
    parser.add_argument("--discover", metavar="SERVICE:PORT",
                        help="every ready pod of a headless Service, at its sidecar's management port")
    parser.add_argument("--desired-state", metavar="FILE|configmap:NAMESPACE/NAME",
                        help="with --replica/--discover: where the fleet's desired state lives (default "
                             "RUN_DIR/rollout_history.json; in a cluster the ConfigMap the pods mount)")
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help=f"model name (default {DEFAULT_MODEL_NAME})")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="archives in the store beside what the server serves; on a "
                                                "fleet, each replica and any drift (exit 1)")
    status.add_argument("--json", action="store_true", help="print the report as JSON")
    deploy = commands.add_parser("deploy", help="check an archive's weights, register it, wait until READY")
    deploy.add_argument("version")
    deploy.add_argument("--workers", type=int, default=1)
    deploy.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for READY")
    for command, text in (("verify", "replay the archive's golden requests against that version"),
                          ("promote", "verify, then make the version the default"),
                          ("retire", "unregister a version that is not the default")):
        commands.add_parser(command, help=text).add_argument("version")
    commands.add_parser("rollback", help="make the previous default the default again")
    args = parser.parse_args(argv)

    try:
        rollout = make_rollout(args)
        if args.command == "status":
            report = rollout.status()
            if args.json:
                print(json.dumps(report, indent=1))
            else:
                print_status(report)
            if report["server_error"]:
                raise RolloutError(f"the server was not queried: {report['server_error']}")
            if report.get("drift"):
                return 1
        elif args.command == "deploy":
            rollout.deploy(args.version, args.workers, args.timeout)
        elif args.command == "verify":
            rollout.verify(args.version)
        elif args.command == "promote":
            rollout.promote(args.version)
        elif args.command == "rollback":
            rollout.rollback()
        elif args.command == "retire":
            rollout.retire(args.version)
    except (RolloutError, ServerRefusal, LayoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
