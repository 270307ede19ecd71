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
from .paths import RUN_DIR
from .torchserve import Endpoint, ServerError, ServerRefusal, TorchServeClient

HISTORY_FILE = "rollout_history.json"
HISTORY_EVENTS_KEPT = 200


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
class RolloutHistory:
    """The versions that were the default, oldest first, per model, plus a log of every step."""

    path: Path
    defaults: dict[str, list[str]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> RolloutHistory:
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            return cls(path, {k: list(v) for k, v in data["defaults"].items()}, list(data.get("events", [])))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
            raise RolloutError(f"{path} is not a rollout history; move it away (rollback then needs an "
                               "explicit `promote VERSION`)") from None

    def record(self, model: str, action: str, version: str, previous: str | None) -> None:
        self.events.append({"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                            "model": model, "action": action, "version": version,
                            "previous_default": previous})
        self.events = self.events[-HISTORY_EVENTS_KEPT:]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"defaults": self.defaults, "events": self.events}, indent=1))
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
    """The rollout steps against one server and its model store, for one model name."""

    client: TorchServeClient
    name: str = DEFAULT_MODEL_NAME
    log: Any = print

    @property
    def store(self) -> Path:
        return self.client.endpoint.model_store

    @property
    def history_path(self) -> Path:
        return self.client.endpoint.run_dir / HISTORY_FILE

    def status(self) -> dict[str, Any]:
        archives = {info.version: info for info in local_archives(self.store, self.name)}
        try:
            server = registered_versions(self.client, self.name)
            default = default_version(self.client, self.name) if server else None
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
        history = RolloutHistory.load(self.history_path)
        return {"model": self.name, "model_store": str(self.store),
                "server": self.client.endpoint.management_url, "server_error": reachable,
                "default": default, "versions": rows,
                "default_history": history.defaults.get(self.name, []),
                "history_file": str(self.history_path)}

    def deploy(self, version: str, workers: int = 1, timeout_s: float = 300.0) -> dict[str, Any]:
        path = archive_path(self.store, self.name, version)
        info = check_integrity(path, self.name, version)
        self.log(f"{path.name}: weights sha256 {info.weights_sha256[:16]}... matches its manifest")
        if info.golden_requests == 0:
            self.log(f"warning: {path.name} has no golden requests; `verify {version}` will refuse it")
        if version in registered_versions(self.client, self.name):
            raise RolloutError(f"{self.name} {version} is already registered; `verify {version}` / "
                               f"`promote {version}` it, or `retire {version}` first to load it again")
        self.log(f"registering {self.name} {version} with {workers} worker(s) ...")
        started = time.monotonic()
        self.client.management(
            "POST", "/models", f"register {path.name}",
            params={"url": path.name, "initial_workers": workers, "synchronous": "true"},
            hints={404: f"the server's model store must hold {path.name} (is it serving {self.store}?)",
                   409: f"`retire {version}` first to load it again"},
            timeout_s=timeout_s,
        )
        try:
            entry = self.client.wait_ready(self.name, version, timeout_s)
        except ServerError as error:
            raise RolloutError(str(error)) from None
        self.log(f"{self.name} {version} READY ({len(worker_states(entry))} worker(s)) in "
                 f"{time.monotonic() - started:.1f} s; the default is still "
                 f"{default_version(self.client, self.name)}")
        history = RolloutHistory.load(self.history_path)
        history.record(self.name, "deploy", version, default_version(self.client, self.name))
        history.save()
        return entry

    def verify(self, version: str) -> list[dict[str, Any]]:
        """Replay the archive's golden requests on ``/predictions/NAME/VERSION``; raise on any difference."""
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
        entry = registered_versions(self.client, self.name).get(version)
        if entry is None:
            raise RolloutError(f"{self.name} {version} is not registered on the server: "
                               f"`deploy {version}` first")
        if not worker_states(entry) or any(state != "READY" for state in worker_states(entry)):
            raise RolloutError(f"{self.name} {version} has workers {worker_states(entry)}, not all READY")
        results, failures, computes = [], [], set()
        for item in golden["requests"]:
            try:
                body = request_body(item)
            except (FileNotFoundError, ValueError) as error:
                raise RolloutError(f"cannot verify: {error}") from None
            answer = self.client.predict(self.name, version, body)
            compute = answer_compute(answer.body)
            tolerances = Tolerances.recorded(golden, compute)
            computes.add(f"{compute}: within {tolerances.probability:g}")
            problems = compare_response(item["status"], item["response"], answer.status, answer.body,
                                        tolerances)
            results.append({"name": item["name"], "status": answer.status, "problems": problems,
                            "ms": round(1000 * answer.seconds, 1)})
            summary = _summary(answer.status, answer.body)
            if problems:
                failures.append(item["name"])
                self.log(f"  MISMATCH {item['name']}: {summary}")
                for problem in problems:
                    self.log(f"           {problem}")
            else:
                self.log(f"  ok       {item['name']}: {summary} ({1000 * answer.seconds:.0f} ms)")
        if failures:
            raise RolloutError(f"{self.name} {version} FAILED verification on {len(failures)} of "
                               f"{len(results)} golden requests ({', '.join(failures)}): the served version "
                               "does not answer as its archive did at build time; do not promote it")
        self.log(f"{self.name} {version} verified: {len(results)} golden requests match (fake probabilities "
                 f"{', '.join(sorted(computes))})")
        return results

    def promote(self, version: str) -> str | None:
        """Verify, then make ``version`` the default; returns the previous default."""
        previous = default_version(self.client, self.name)
        if previous == version:
            raise RolloutError(f"{self.name} {version} is already the default")
        self.verify(version)
        self._set_default(version, f"promote {version}")
        history = RolloutHistory.load(self.history_path)
        stack = history.defaults.setdefault(self.name, [])
        if previous is not None and (not stack or stack[-1] != previous):
            stack.append(previous)
        stack.append(version)
        history.record(self.name, "promote", version, previous)
        history.save()
        self.log(f"{self.name} default: {previous} -> {version} (rollback returns to {previous})")
        return previous

    def rollback(self) -> str:
        """Make the version that was the default before the current one the default again."""
        history = RolloutHistory.load(self.history_path)
        stack = history.defaults.get(self.name, [])
        current = default_version(self.client, self.name)
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
        if target not in registered_versions(self.client, self.name):
            raise RolloutError(f"the previous default {self.name} {target} is no longer registered "
                               f"(retired?); `deploy {target}` again, or `promote` another version")
        self._set_default(target, f"roll back to {target}")
        stack.pop()
        history.record(self.name, "rollback", target, current)
        history.save()
        self.log(f"{self.name} default: {current} -> {target} (rolled back)")
        return target

    def retire(self, version: str) -> None:
        versions = registered_versions(self.client, self.name)
        if version not in versions:
            raise RolloutError(f"{self.name} {version} is not registered; registered: {sorted(versions)}")
        if version == default_version(self.client, self.name):
            raise RolloutError(f"{self.name} {version} is the default and serves /predictions/{self.name}: "
                               "`promote` or `rollback` to another version first")
        self.client.management(
            "DELETE", f"/models/{self.name}/{version}", f"unregister {self.name} {version}",
            hints={403: "it became the default meanwhile; promote another version first"},
        )
        history = RolloutHistory.load(self.history_path)
        history.record(self.name, "retire", version, default_version(self.client, self.name))
        history.save()
        self.log(f"{self.name} {version} unregistered; still registered: "
                 f"{sorted(registered_versions(self.client, self.name), key=_version_key)}")

    def _set_default(self, version: str, action: str) -> None:
        self.client.management("PUT", f"/models/{self.name}/{version}/set-default", action,
                               hints={404: f"`deploy {version}` first"})
        now = default_version(self.client, self.name)
        if now != version:
            raise RolloutError(f"{action}: the server accepted, but its default is {now}")


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


def print_status(report: dict[str, Any]) -> None:
    print(f"model {report['model']}  store {report['model_store']}  server {report['server']}")
    header = f"  {'version':<9}{'default':<9}{'registered':<12}{'workers':<16}{'trained':<9}{'golden':<8}" \
             f"{'weights sha256':<19}created"
    print(header)
    for row in report["versions"]:
        workers = ",".join(row["workers"]) or "-"
        sha = (row["weights_sha256"] or "(no archive)")[:16]
        trained = {True: "yes", False: "no", None: "?"}[row["trained"]]
        golden = "-" if row["golden_requests"] is None else str(row["golden_requests"])
        default, registered = "*" if row["default"] else "", "yes" if row["registered"] else "no"
        print(f"  {row['version']:<9}{default:<9}{registered:<12}{workers:<16}{trained:<9}{golden:<8}"
              f"{sha:<19}{row['created'] or '-'}")
    history = " -> ".join(report["default_history"]) or "(none recorded)"
    print(f"default {report['default']}; promotions recorded in {report['history_file']}: {history}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR,
                        help="the server's run folder: config.properties, key_file.json, rollout history")
    parser.add_argument("--model-store", type=Path, help="default: the one in the run folder's config")
    parser.add_argument("--management-url", help="default: management_address of the run folder's config")
    parser.add_argument("--inference-url", help="default: inference_address of the run folder's config")
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help=f"model name (default {DEFAULT_MODEL_NAME})")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="archives in the store beside what the server serves")
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

    endpoint = Endpoint.from_run_dir(args.run_dir, args.management_url, args.inference_url, args.model_store)
    rollout = Rollout(TorchServeClient(endpoint), args.name)
    try:
        if args.command == "status":
            report = rollout.status()
            if args.json:
                print(json.dumps(report, indent=1))
            else:
                print_status(report)
            if report["server_error"]:
                raise RolloutError(f"the server was not queried: {report['server_error']}")
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
    except (RolloutError, ServerRefusal) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
