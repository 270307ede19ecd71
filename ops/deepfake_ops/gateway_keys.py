"""The gateway's keys: one per client (or operator), stored as SHA-256 hashes, each with its own rate.

A key is shown once, when it is made; the file (``gateway_keys.json``, mode 600) keeps its hash, its name,
its role and its rate, and a revoked key stays listed (with when) so the audit trail keeps its name. The
gateway never sees the file itself: :func:`render_key_files` writes nginx maps of hash -> name and one rate
zone per rate tier, and the running gateway is reloaded (gracefully: requests in flight finish).

    deepfake-gateway-keys add NAME [--rate 20 --burst 40]   # prints the new key once
    deepfake-gateway-keys add deployer --operator           # a key for the replicas' management side
    deepfake-gateway-keys revoke NAME
    deepfake-gateway-keys list
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import re
import secrets
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .paths import RUN_DIR

KEY_FILE_NAME = "gateway_keys.json"
DEFAULT_KEY_FILE = RUN_DIR / "fleet" / KEY_FILE_NAME
NAME_PATTERN = re.compile(r"^[a-z0-9_-]{1,64}$")
"""Lower case only: nginx matches map keys without regard to case, so Alice and alice would be one key."""
RESERVED_NAMES = frozenset({"default", "hostnames", "include", "volatile"})
"""Words an nginx map reads as its own parameters, not as a key."""
ROLES = ("client", "operator")
DEFAULT_RATE_PER_S = 20.0
DEFAULT_BURST = 40


class KeyFileError(RuntimeError):
    """The key file cannot be read, or a change to it was refused; the message says why."""


@dataclass(frozen=True)
class GatewayKey:
    """One key as the file keeps it: never the key itself."""

    name: str
    sha256: str
    role: str = "client"
    rate_per_s: float = DEFAULT_RATE_PER_S
    burst: int = DEFAULT_BURST
    created: str = ""
    revoked: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    @property
    def retry_after_s(self) -> int:
        """Seconds until the bucket of a key over its rate has room again (at least 1: HTTP counts in seconds)."""
        return max(1, math.ceil(1.0 / self.rate_per_s))


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class GatewayKeys:
    """The key file: read, add, revoke, written atomically with mode 600."""

    def __init__(self, path: Path = DEFAULT_KEY_FILE) -> None:
        self.path = Path(path)

    def all(self) -> list[GatewayKey]:
        if not self.path.exists():
            return []
        try:
            return [GatewayKey(**item) for item in json.loads(self.path.read_text())["keys"]]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise KeyFileError(f"{self.path} is not a gateway key file ({error})") from None

    def active(self, role: str | None = None) -> list[GatewayKey]:
        return [key for key in self.all() if key.active and (role is None or key.role == role)]

    def add(self, name: str, role: str = "client", rate_per_s: float = DEFAULT_RATE_PER_S,
            burst: int = DEFAULT_BURST) -> str:
        """Make a key, store its hash, and return the key (the only time it exists outside the client)."""
        if not NAME_PATTERN.match(name) or name in RESERVED_NAMES:
            raise KeyFileError(f"key name {name!r}: use 1-64 lower-case letters, digits, '_' or '-', and none of "
                               f"{', '.join(sorted(RESERVED_NAMES))}")
        if role not in ROLES:
            raise KeyFileError(f"role {role!r}: one of {', '.join(ROLES)}")
        if not (rate_per_s > 0 and math.isfinite(rate_per_s)) or burst < 0:
            raise KeyFileError("the rate must be above 0 requests/s and the burst 0 or more")
        keys = self.all()
        if any(key.name == name and key.active for key in keys):
            raise KeyFileError(f"a key named {name} exists; revoke it first to replace it")
        key = "dfk_" + secrets.token_urlsafe(32)
        keys.append(GatewayKey(name, key_sha256(key), role, float(rate_per_s), int(burst), _now()))
        self._write(keys)
        return key

    def revoke(self, name: str) -> GatewayKey:
        keys = self.all()
        live = [key for key in keys if key.name == name and key.active]
        if not live:
            raise KeyFileError(f"no active key named {name}; active: {[k.name for k in keys if k.active]}")
        revoked = GatewayKey(**{**asdict(live[0]), "revoked": _now()})
        self._write([revoked if key is live[0] else key for key in keys])
        return revoked

    def _write(self, keys: list[GatewayKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            json.dump({"keys": [asdict(key) for key in keys]}, stream, indent=1)
        os.replace(temporary, self.path)


# ------------------------------------------------------------------------------------------ nginx files


def _rate(rate_per_s: float) -> str:
    """nginx's rate syntax: whole requests per second, else per minute."""
    return f"{rate_per_s:g}r/s" if float(rate_per_s).is_integer() else f"{round(rate_per_s * 60)}r/m"


def render_key_files(keys: list[GatewayKey], folder: Path) -> list[Path]:
    """The maps and rate zones the gateway's nginx.conf includes, from the active keys."""
    clients = [key for key in keys if key.active and key.role == "client"]
    operators = [key for key in keys if key.active and key.role == "operator"]
    tiers: dict[tuple[float, int], list[GatewayKey]] = {}
    for key in clients:
        tiers.setdefault((key.rate_per_s, key.burst), []).append(key)
    limits = ["# Rendered by deepfake_ops.gateway_keys from gateway_keys.json: one zone per (rate, burst) tier."]
    limit_req = []
    for number, ((rate, burst), members) in enumerate(sorted(tiers.items()), start=1):
        limits.append(f"map $client_id $rate_tier_{number} {{\n    default \"\";")
        limits += [f"    {key.name} {key.name};" for key in members]
        limits.append("}")
        limits.append(f"limit_req_zone $rate_tier_{number} zone=rate_tier_{number}:1m rate={_rate(rate)};")
        limit_req.append(f"limit_req zone=rate_tier_{number} burst={burst} nodelay;")
    limits.append("map $client_id $client_retry_after {\n    default 1;")
    limits += [f"    {key.name} {key.retry_after_s};" for key in clients]
    limits.append("}")
    files = {
        "client_keys.map": [f"{key.sha256} {key.name};" for key in clients],
        "operator_keys.map": [f"{key.sha256} {key.name};" for key in operators],
        "limits.conf": limits,
        "limit_req.conf": limit_req,
    }
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, lines in files.items():
        path = folder / name
        path.write_text("\n".join(lines) + "\n")
        written.append(path)
    return written


# -------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    from .gateway import Gateway, GatewayError  # the CLI reloads a running gateway; the file needs no nginx

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key-file", type=Path, default=DEFAULT_KEY_FILE)
    parser.add_argument("--gateway-dir", type=Path, help="the running gateway's folder (default: beside the key file)")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="make a key; it is printed once")
    add.add_argument("name")
    add.add_argument("--rate", type=float, default=DEFAULT_RATE_PER_S, help="requests per second (default 20)")
    add.add_argument("--burst", type=int, default=DEFAULT_BURST, help="requests above the rate taken at once")
    add.add_argument("--operator", action="store_true", help="a key for the replicas' management side")
    commands.add_parser("revoke", help="revoke a key at once").add_argument("name")
    commands.add_parser("list", help="names, roles, rates, when made and revoked")
    args = parser.parse_args(argv)

    keys = GatewayKeys(args.key_file)
    try:
        if args.command == "list":
            for key in keys.all():
                state = f"revoked {key.revoked}" if key.revoked else "active"
                print(f"{key.name:<32} {key.role:<9} {f'{key.rate_per_s:g}/s burst {key.burst}':<24} "
                      f"made {key.created}  {state}")
            return 0
        if args.command == "add":
            secret = keys.add(args.name, "operator" if args.operator else "client", args.rate, args.burst)
        else:
            keys.revoke(args.name)
            secret = None
        gateway = Gateway(args.gateway_dir or args.key_file.parent / "gateway")
        if gateway.pid() is not None:
            gateway.reload_keys(keys.all())
            print(f"gateway at {gateway.run_dir} reloaded", file=sys.stderr)
    except (KeyFileError, GatewayError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if secret is not None:
        print(secret)
    return 0


if __name__ == "__main__":
    sys.exit(main())
