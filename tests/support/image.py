"""The container image without a container engine: the Dockerfile read as data, and its layout staged here.

No Docker daemon runs on this machine or in CI. What can be checked without one is checked from the
Dockerfile itself, so that the tests follow it when it changes: its base (for the requirements' Python and
platform), its ``ENV``, ``USER``, ``ENTRYPOINT`` and ``HEALTHCHECK``, and the ``COPY`` and ``RUN`` steps
that lay out ``/srv/deepfake``. :func:`stage` replays those steps under a temporary root; the package
installs (apt-get, pip) are what ``make install`` already did on this machine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from deepfake_ops.paths import REPO

IMAGE_ROOT = "/srv/deepfake"
DEBIAN_GLIBC = {"bullseye": (2, 31), "bookworm": (2, 36), "trixie": (2, 41)}
"""glibc of the Debian releases the official python images are built on: the wheels' manylinux ceiling."""


@dataclass
class Stage:
    name: str | None
    parent: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Dockerfile:
    """The instructions of one target, its parent stages' first."""

    instructions: list[tuple[str, str]]
    base: str

    @classmethod
    def read(cls, path: Path = REPO / "Dockerfile", target: str | None = None) -> Dockerfile:
        stages: list[Stage] = []
        for keyword, arguments in _instructions(path.read_text()):
            if keyword == "FROM":
                words = arguments.split()
                stages.append(Stage(words[2] if len(words) >= 3 and words[1].upper() == "AS" else None, words[0]))
            elif stages:
                stages[-1].instructions.append((keyword, arguments))
        by_name = {stage.name: stage for stage in stages if stage.name}
        stage = by_name[target] if target else stages[-1]
        chain = [stage]
        while chain[-1].parent in by_name:
            chain.append(by_name[chain[-1].parent])
        return cls([item for link in reversed(chain) for item in link.instructions], chain[-1].parent)

    def values(self, keyword: str) -> list[str]:
        return [arguments for word, arguments in self.instructions if word == keyword]

    @property
    def python_version(self) -> str:
        """``3.11`` from a ``python:3.11-slim-bookworm`` base."""
        match = re.match(r"python:(\d+\.\d+)", self.base)
        assert match, f"the base {self.base} is not an official python image"
        return match.group(1)

    @property
    def glibc(self) -> tuple[int, int]:
        release = next(name for name in DEBIAN_GLIBC if name in self.base)
        return DEBIAN_GLIBC[release]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for arguments in self.values("ENV"):
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                values[key] = value
        return values

    @property
    def user(self) -> int:
        return int(self.values("USER")[-1])

    @property
    def entrypoint(self) -> list[str]:
        return json.loads(self.values("ENTRYPOINT")[-1])

    @property
    def healthcheck(self) -> list[str]:
        arguments = self.values("HEALTHCHECK")[-1]
        return json.loads(arguments.split("CMD", 1)[1])

    def copies(self) -> Iterator[tuple[list[str], str]]:
        for arguments in self.values("COPY"):
            words = [word for word in shlex.split(arguments) if not word.startswith("--")]
            yield words[:-1], words[-1]


def _instructions(text: str) -> Iterator[tuple[str, str]]:
    """(KEYWORD, arguments) with continuation lines joined and comments dropped."""
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, arguments = logical.partition(" ")
        yield keyword.upper(), arguments.strip()
        logical = ""


def remap(value: str, root: Path) -> str:
    """A path or command of the image with ``/srv/deepfake`` moved to ``root``."""
    return value.replace(IMAGE_ROOT, str(root))


def stage_files(dockerfile: Dockerfile, root: Path, archives: list[Path]) -> None:
    """Lay out the image's ``/srv/deepfake`` under ``root`` as its COPY steps do, with ``archives`` as the
    baked-in model store (a clean checkout has none)."""
    for sources, target in dockerfile.copies():
        if not target.startswith(IMAGE_ROOT):
            continue  # /tmp/requirements-serving.txt: what make install already installed
        destination = Path(remap(target, root))
        for source in sources:
            if source.rstrip("/") == "model_store":
                destination.mkdir(parents=True, exist_ok=True)
                for archive in archives:
                    shutil.copy2(archive, destination / archive.name)
            elif (REPO / source).is_dir():
                shutil.copytree(REPO / source, destination, dirs_exist_ok=True)
            else:
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / source, destination)
    root.chmod(0o755)


def stage(dockerfile: Dockerfile, root: Path, archives: list[Path]) -> bool:
    """:func:`stage_files`, then the build's root-only layout steps (the image's user, its folder). Returns
    whether the user was created here (and is the caller's to remove)."""
    stage_files(dockerfile, root, archives)
    existed = subprocess.run(["getent", "passwd", str(dockerfile.user)], capture_output=True).returncode == 0
    for command in dockerfile.values("RUN"):
        if IMAGE_ROOT in command:  # the layout steps; the package installs are make install's
            subprocess.run(["sh", "-c", remap(command, root)], check=True, env={**os.environ, "APP_HOME": str(root)})
    return not existed


def remove_user(uid: int) -> None:
    name = subprocess.run(["getent", "passwd", str(uid)], capture_output=True, text=True).stdout.split(":")[0]
    if name:
        subprocess.run(["userdel", name], check=True)


@dataclass
class EntrypointRun:
    """What the entrypoint would start TorchServe with: its environment, arguments, folder and config."""

    env: dict[str, str]
    arguments: list[str]
    cwd: str
    config: dict[str, str]


def dry_run_entrypoint(dockerfile: Dockerfile, root: Path, **overrides: str) -> EntrypointRun:
    """The image's entrypoint script with its ENV (``/srv/deepfake`` at ``root``), a stand-in ``torchserve``
    first on PATH that records how it was started and exits: the start-up, without TorchServe."""
    record = root.parent / "torchserve-call"
    stand_in = root.parent / "stand-in"
    stand_in.mkdir(exist_ok=True)
    (stand_in / "torchserve").write_text(
        f'#!/bin/sh\nenv > "{record}.env"\npwd > "{record}.cwd"\nprintf "%s\\n" "$@" > "{record}.args"\n')
    (stand_in / "torchserve").chmod(0o755)
    env = {key: remap(value, root) for key, value in dockerfile.env().items()}
    env |= {"PATH": f"{stand_in}{os.pathsep}/usr/bin:/bin"} | overrides
    script = next(remap(word, root) for word in dockerfile.entrypoint if word.endswith("entrypoint.sh"))
    subprocess.run([script], env=env, check=True, capture_output=True, timeout=60)
    recorded_env = dict(line.split("=", 1) for line in Path(f"{record}.env").read_text().splitlines() if "=" in line)
    arguments = Path(f"{record}.args").read_text().splitlines()
    config_file = Path(arguments[arguments.index("--ts-config") + 1])
    config = dict(line.split("=", 1) for line in config_file.read_text().splitlines()
                  if "=" in line and not line.startswith("#"))
    return EntrypointRun(recorded_env, arguments, Path(f"{record}.cwd").read_text().strip(), config)
