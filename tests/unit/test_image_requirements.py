"""The images' pinned requirements resolve for the Python and platform of the Dockerfile's bases.

``pip install --dry-run`` with the base's Python version, its glibc's manylinux tags and wheels only: what
``pip install`` in the Dockerfile would do, short of downloading. TorchServe's own 0.12.0 images ship Python
3.9; the same pins must fail there, which shows that the check can fail at all. The job service's image
(the ``jobs`` target) must resolve without torch, directly or through any of its pins.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from deepfake_ops.paths import REPO

from tests.support.image import Dockerfile

REQUIREMENTS = REPO / "requirements-serving.txt"
JOB_REQUIREMENTS = REPO / "requirements-jobs.txt"
TORCHSERVE_IMAGE_PYTHON = "3.9"
"""pytorch/torchserve:0.12.0-cpu and -gpu (pytorch/serve v0.12.0, docker/Dockerfile's PYTHON_VERSION)."""


def resolve(python_version: str, glibc: tuple[int, int], report: Path,
            requirements: Path = REQUIREMENTS) -> subprocess.CompletedProcess[str]:
    major, minor = glibc
    platforms = [f"manylinux_{major}_{m}_x86_64" for m in range(17, minor + 1)] + ["manylinux2014_x86_64"]
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
               "--only-binary", ":all:", "--python-version", python_version, "--implementation", "cp",
               "--target", str(report.parent / "target"), "--report", str(report), "-r", str(requirements)]
    for platform in platforms:
        command += ["--platform", platform]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def pins(requirements: Path) -> dict[str, str]:
    return dict(line.split("==") for line in requirements.read_text().splitlines()
                if "==" in line and not line.startswith("#"))


def installed_by(report: Path) -> dict[str, str]:
    return {item["metadata"]["name"].lower(): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]}


def test_the_serving_requirements_resolve_for_the_image_python_and_not_for_torchserve_s(tmp_path: Path) -> None:
    """One command, two Pythons: the only difference is the version, so the failure on 3.9 is the version's."""
    dockerfile = Dockerfile.read()
    resolved = resolve(dockerfile.python_version, dockerfile.glibc, tmp_path / "report.json")
    assert resolved.returncode == 0, resolved.stderr[-3000:]
    installed = installed_by(tmp_path / "report.json")
    pinned = pins(REQUIREMENTS)
    print(f"\n{dockerfile.base}: {len(installed)} wheels, e.g. torch {installed.get('torch')}")
    for name, version in pinned.items():
        assert installed.get(name.lower()) == version, (name, installed.get(name.lower()))

    old = resolve(TORCHSERVE_IMAGE_PYTHON, dockerfile.glibc, tmp_path / "old" / "report.json")
    print(f"Python {TORCHSERVE_IMAGE_PYTHON}: {old.stderr.strip().splitlines()[-1] if old.stderr else ''}")
    assert old.returncode != 0 and "ResolutionImpossible" in old.stderr


def test_the_job_requirements_resolve_for_the_jobs_image_without_torch(tmp_path: Path) -> None:
    """Everything pip would install in the ``jobs`` target, dependencies included: the pins, and no torch, CUDA
    or TorchServe (the workers send pieces to TorchServe; they never run the network)."""
    dockerfile = Dockerfile.read(target="jobs")
    assert re.findall(r"-r\s+(\S+)", " ".join(dockerfile.values("RUN"))) == [f"/tmp/{JOB_REQUIREMENTS.name}"]
    resolved = resolve(dockerfile.python_version, dockerfile.glibc, tmp_path / "report.json", JOB_REQUIREMENTS)
    assert resolved.returncode == 0, resolved.stderr[-3000:]
    installed = installed_by(tmp_path / "report.json")
    print(f"\njobs on {dockerfile.base}: {len(installed)} wheels")
    for name, version in pins(JOB_REQUIREMENTS).items():
        assert installed.get(name.lower()) == version, (name, installed.get(name.lower()))
    heavy = sorted(name for name in installed
                   if name.startswith(("torch", "nvidia-", "triton", "onnxruntime", "timm", "facenet")))
    assert not heavy, heavy
