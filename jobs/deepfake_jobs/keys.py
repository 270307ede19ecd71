"""The job API's bearer keys: made at first start, kept in a file like TorchServe's ``key_file.json``.

``api_keys.json`` (mode 600, in the job service's run folder) lists named keys; each has a webhook secret
that signs that key's webhooks (``webhooks``). A job belongs to the key that made it: its record holds the
key's *id* (a hash), never the key, so Redis, the logs and the answers never carry a key.

    python -m deepfake_jobs.keys list            # names and ids
    python -m deepfake_jobs.keys add NAME        # a new key and its webhook secret, in the file
    python -m deepfake_jobs.keys show NAME       # the key alone, for KEY=$(...) in a shell
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from .settings import JobSettings

DEFAULT_KEY_NAME = "default"


@dataclass(frozen=True)
class ApiKey:
    name: str
    key: str
    webhook_secret: str

    @property
    def id(self) -> str:
        """What a job's record stores of its owner: a hash that cannot be turned back into the key."""
        return key_id(self.key)


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


class KeyRing:
    """The keys in one file; :meth:`owner` checks a presented key in constant time."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._keys: list[ApiKey] = []
        self._loaded_mtime = -1.0

    def _reload(self) -> None:
        mtime = self.path.stat().st_mtime
        if mtime != self._loaded_mtime:
            data = json.loads(self.path.read_text())
            self._keys = [ApiKey(item["name"], item["key"], item["webhook_secret"]) for item in data["keys"]]
            self._loaded_mtime = mtime

    def all(self) -> list[ApiKey]:
        self._reload()
        return list(self._keys)

    def owner(self, presented: str) -> ApiKey | None:
        """The key matching ``presented``, or None (every key compared, so timing says nothing)."""
        match = None
        for candidate in self.all():
            if hmac.compare_digest(candidate.key.encode(), presented.encode()):
                match = candidate
        return match

    def named(self, name: str) -> ApiKey | None:
        return next((key for key in self.all() if key.name == name), None)

    def by_id(self, owner_id: str) -> ApiKey | None:
        return next((key for key in self.all() if key.id == owner_id), None)

    def add(self, name: str) -> ApiKey:
        """A new key under ``name`` (refused if the name is taken), written with the file kept at mode 600."""
        existing = self.all() if self.path.exists() else []
        if any(key.name == name for key in existing):
            raise ValueError(f"a key named {name!r} exists in {self.path}")
        made = ApiKey(name, secrets.token_urlsafe(32), secrets.token_urlsafe(32))
        _write(self.path, [*existing, made])
        self._loaded_mtime = -1.0
        return made


def ensure_key_file(path: Path) -> KeyRing:
    """The key ring at ``path``, made with one ``default`` key at first start."""
    ring = KeyRing(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        ring.add(DEFAULT_KEY_NAME)
    return ring


def _write(path: Path, keys: list[ApiKey]) -> None:
    data = {"keys": [{"name": k.name, "key": k.key, "webhook_secret": k.webhook_secret} for k in keys]}
    temp = path.with_suffix(".tmp")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(data, handle, indent=2)
    os.replace(temp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["list", "add", "show"])
    parser.add_argument("name", nargs="?")
    args = parser.parse_args(argv)
    ring = ensure_key_file(JobSettings.from_env().key_file)
    if args.command == "list":
        for key in ring.all():
            print(f"{key.name}\tid {key.id}")
        return 0
    if not args.name:
        parser.error(f"{args.command} needs a NAME")
    if args.command == "show":
        found = ring.named(args.name)
        if found is None:
            print(f"error: no key named {args.name!r} in {ring.path}", file=sys.stderr)
            return 1
        print(found.key)
        return 0
    try:
        made = ring.add(args.name)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"key {made.name} (id {made.id}) added to {ring.path}; its key and webhook secret are in that file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
