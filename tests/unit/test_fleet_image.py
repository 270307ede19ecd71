"""The ``fleet`` image target (the gateway and each replica's sidecar): what it copies, that the code its
commands run imports from those folders alone without torch, and that its pins are what the tests run with.
No container engine runs here, so the Dockerfile is read as data (``tests.support.image``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from deepfake_ops.paths import REPO

from tests.support.image import IMAGE_ROOT, Dockerfile, remap


def test_the_fleet_image_carries_nginx_and_the_light_packages() -> None:
    fleet = Dockerfile.read(target="fleet")
    assert fleet.user == 10001 and fleet.entrypoint == ["/usr/bin/tini", "--"]
    installs = " ".join(fleet.values("RUN"))
    assert "nginx-light" in installs and "libnginx-mod-http-js" in installs
    copies = {source.rstrip("/"): target for sources, target in fleet.copies() for source in sources}
    assert {source for source, target in copies.items() if target.startswith(f"{IMAGE_ROOT}/lib/")} == {
        "detector/deepfake_detector", "ops/deepfake_ops"}
    assert copies["config"] == f"{IMAGE_ROOT}/config/"


def test_the_fleet_pins_are_the_versions_tested() -> None:
    pins = dict(line.split("==") for line in (REPO / "requirements-fleet.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert {name: metadata.version(name) for name in pins} == pins


def test_the_fleet_code_imports_without_torch_as_the_image_lays_it_out(tmp_path: Path) -> None:
    """deepfake_ops.pod (the command of both containers) and what it loads, from the image's folders alone,
    with torch, TorchServe's Python and the other packages made unimportable."""
    image = Dockerfile.read(target="fleet")
    root = tmp_path / "srv-deepfake"
    for sources, target in image.copies():
        (source,) = sources
        if target.startswith((f"{IMAGE_ROOT}/lib/", f"{IMAGE_ROOT}/config")):
            shutil.copytree(REPO / source, remap(target, root), ignore=shutil.ignore_patterns("__pycache__"))
    blocked = ("torch", "torchvision", "timm", "facenet_pytorch", "onnxruntime", "ts", "numpy", "cv2",
               "deepfake_jobs", "deepfake_training")
    script = (f"import importlib, sys\nsys.modules.update(dict.fromkeys({blocked!r}))\n"
              "for name in ('deepfake_ops.pod', 'deepfake_ops.gateway', 'deepfake_ops.rollout'):\n"
              "    print(importlib.import_module(name).__file__)\n"
              "from deepfake_ops.gateway import torchserve_limits\nprint(torchserve_limits())\n")
    env = {key: remap(value, root) for key, value in image.env().items()}
    (root / "var").mkdir(parents=True)
    loaded = subprocess.run([sys.executable, "-c", script], env={"PATH": os.environ["PATH"], **env},
                            cwd=root / "var", capture_output=True, text=True, timeout=120, check=False)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    lines = loaded.stdout.split("\n")
    assert all(line.startswith(str(root / "lib")) for line in lines[:3]), loaded.stdout
    assert lines[3] == "(68157440, 130)"  # the gateway's limits, from the image's own config/
