"""Security defaults in what ships: loopback listeners in config.properties, a container and pods that do not
run as root, and a Dockerfile and manifests that pass their linters (offline)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml
from deepfake_ops.paths import REPO
from deepfake_ops.torchserve import CONFIG_TEMPLATE

from tests.support.image import IMAGE_ROOT, Dockerfile, dry_run_entrypoint, stage_files


def test_listeners_are_on_loopback_in_the_shipped_config() -> None:
    properties = dict(
        line.split("=", 1)
        for line in CONFIG_TEMPLATE.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    for key in ("inference_address", "management_address", "metrics_address"):
        assert re.fullmatch(r"https?://127\.0\.0\.1:\d+", properties[key]), (key, properties[key])
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert properties[key] == "127.0.0.1", (key, properties[key])
    assert properties["disable_token_authorization"] == "false"
    assert properties["allowed_urls"] == "file://@MODEL_STORE@/.*"


def test_container_and_pods_run_as_non_root() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^\s*USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users, "the Dockerfile sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users
    assert re.search(r"^\s*HEALTHCHECK\s", dockerfile, flags=re.MULTILINE)

    pods = []
    for path in sorted((REPO / "deploy").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") in ("Deployment", "StatefulSet"):
                pods.append((path.name, document["spec"]["template"]["spec"]))
    assert pods, "no Deployment under deploy/"
    for name, pod in pods:
        context = pod.get("securityContext", {})
        assert context.get("runAsNonRoot") is True and context.get("runAsUser", 0) != 0, name
        for container in pod["containers"]:
            assert container.get("securityContext", {}).get("allowPrivilegeEscalation") is False, name


def test_dockerfile_and_manifests_pass_their_linters() -> None:
    """hadolint and kubernetes-validate (pinned in requirements.txt) run offline; no Docker engine needed."""
    tools = Path(sys.executable).parent
    hadolint = subprocess.run(
        [str(tools / "hadolint"), str(REPO / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert hadolint.returncode == 0, hadolint.stdout + hadolint.stderr
    manifests = sorted(str(path) for path in (REPO / "deploy").glob("*.yaml"))
    validated = subprocess.run(
        [str(tools / "kubernetes-validate"), "--strict", *manifests],
        capture_output=True,
        text=True,
        check=False,
    )
    print(validated.stdout.strip())
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert validated.stdout.count("passed") >= 4  # Deployment, Service, HorizontalPodAutoscaler, PDB


def test_the_manifest_gives_the_image_what_it_writes_to(tmp_path: Path) -> None:
    """The pod probes with the image's own health check, mounts a volume over the one folder the image writes
    (its root filesystem read-only), and a size-limited memory volume where the entrypoint puts videos."""
    image = Dockerfile.read()
    (deployment,) = [document for document in yaml.safe_load_all((REPO / "deploy" / "deepfake-detector.yaml")
                                                                  .read_text())
                     if document and document.get("kind") == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == image.healthcheck, probe
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
    assert f"{IMAGE_ROOT}/var" in mounts
    root = tmp_path / "srv-deepfake"
    stage_files(image, root, [])
    video_folder = dry_run_entrypoint(image, root).env["DEEPFAKE_VIDEO_TMPDIR"].replace(str(root), IMAGE_ROOT)
    video_tmp = mounts[video_folder]["emptyDir"]
    assert video_tmp["medium"] == "Memory" and video_tmp["sizeLimit"]
    assert container["resources"]["limits"]["cpu"] == container["resources"]["requests"]["cpu"]
