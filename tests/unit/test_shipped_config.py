"""Security defaults in what ships: loopback listeners in config.properties, a container and pods that do not
run as root, and a Dockerfile and manifests that pass their linters (offline). The job service's image and
manifest: its code without torch, and what its pods share (uploads, TorchServe's keys)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from deepfake_ops.paths import REPO
from deepfake_ops.torchserve import CONFIG_TEMPLATE

from tests.support.image import IMAGE_ROOT, Dockerfile, dry_run_entrypoint, remap, stage_files

JOBS_MANIFEST = REPO / "deploy" / "deepfake-jobs.yaml"


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
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container.get("securityContext", {}).get("allowPrivilegeEscalation") is False, name


def test_dockerfile_and_manifests_pass_their_linters() -> None:
    """hadolint and kubernetes-validate (pinned in requirements.txt) run offline; no Docker engine needed."""
    tools = Path(sys.executable).parent
    hadolint = subprocess.run(
        [str(tools / "hadolint"), str(REPO / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert hadolint.returncode == 0, hadolint.stdout + hadolint.stderr
    manifests = sorted(str(path) for path in (REPO / "deploy").glob("*.yaml"))
    resources = [document for path in manifests for document in yaml.safe_load_all(Path(path).read_text())
                 if document]
    validated = subprocess.run(
        [str(tools / "kubernetes-validate"), "--strict", *manifests],
        capture_output=True,
        text=True,
        check=False,
    )
    print(validated.stdout.strip())
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert validated.stdout.count("passed") == len(resources) >= 4  # every resource checked, none skipped


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


def build_context_excludes(path: str) -> bool:
    """Whether ``.dockerignore`` leaves ``path`` out of the build context: the last line matching it decides, and
    a line matches a path or any folder above it, as Docker's do (close enough for this file's patterns)."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: count]) for count in range(1, len(parts) + 1)]
    excluded = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern = line.removeprefix("!").strip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            excluded = not line.startswith("!")
    return excluded


def test_the_jobs_image_carries_the_job_code_and_no_more() -> None:
    """The ``jobs`` target: the detector's Python and user (uploads are mode 600, read by the API and the workers
    alike), tini without ``-g`` (Celery's main process alone gets SIGTERM and lets its pool finish), the two
    packages the job code imports, each of their files in the build context and no ``__pycache__``."""
    detector, jobs = Dockerfile.read(), Dockerfile.read(target="jobs")
    assert jobs.base == detector.base and jobs.user == detector.user == 10001
    assert jobs.entrypoint == ["/usr/bin/tini", "--"]
    copies = {source: target for sources, target in jobs.copies() for source in sources}
    packages = {source.rstrip("/") for source, target in copies.items() if target.startswith(f"{IMAGE_ROOT}/lib/")}
    assert packages == {"detector/deepfake_detector", "jobs/deepfake_jobs"}, copies
    assert jobs.env()["PYTHONPATH"] == f"{IMAGE_ROOT}/lib"
    for source in copies:
        files = [source] if (REPO / source).is_file() else [
            str(path.relative_to(REPO)) for path in (REPO / source).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts]
        assert files, source
        for file in files:
            assert not build_context_excludes(file), f"{file} is not in the build context (.dockerignore)"
    assert build_context_excludes("jobs/deepfake_jobs/__pycache__/api.cpython-311.pyc")


def jobs_manifest() -> dict[tuple[str, str], dict[str, Any]]:
    return {(document["kind"], document["metadata"]["name"]): document
            for document in yaml.safe_load_all(JOBS_MANIFEST.read_text()) if document}


def test_the_job_code_imports_without_torch_as_the_image_lays_it_out(tmp_path: Path) -> None:
    """The modules the image's command (the API) and the worker's command (Celery's ``-A``) load, from the two
    package folders alone, with torch, TorchServe and the repository's other packages made unimportable."""
    image = Dockerfile.read(target="jobs")
    root = tmp_path / "srv-deepfake"
    for sources, target in image.copies():
        if target.startswith(f"{IMAGE_ROOT}/lib/"):
            (destination,) = sources
            shutil.copytree(REPO / destination, remap(target, root), ignore=shutil.ignore_patterns("__pycache__"))
    (api,) = re.findall(r"uvicorn\s+([\w.]+):", " ".join(json.loads(image.values("CMD")[-1])))
    worker = jobs_manifest()[("Deployment", "deepfake-jobs-worker")]["spec"]["template"]["spec"]
    (container,) = worker["containers"]
    tasks = container["args"][container["args"].index("-A") + 1]
    blocked = ("torch", "torchvision", "timm", "facenet_pytorch", "onnxruntime", "ts", "deepfake_ops",
               "deepfake_training")
    script = (f"import importlib, sys\nsys.modules.update(dict.fromkeys({blocked!r}))\n"
              f"for name in {[api, tasks]!r}:\n    print(importlib.import_module(name).__file__)\n")
    env = {key: remap(value, root) for key, value in image.env().items()}
    (root / "var").mkdir(parents=True)
    loaded = subprocess.run([sys.executable, "-c", script], env={"PATH": os.environ["PATH"], **env},
                            cwd=root / "var", capture_output=True, text=True, timeout=120, check=False)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert all(line.startswith(str(root / "lib")) for line in loaded.stdout.split()), loaded.stdout


def test_the_jobs_manifest_shares_uploads_and_torchserve_s_keys(tmp_path: Path) -> None:
    """The API and every worker mount one ReadWriteMany claim at the run folder; each worker pod runs its own
    TorchServe (the detector's image) as a sidecar that is READY before the worker starts, and the worker's key
    folder is where that TorchServe writes key_file.json, on a volume the two share."""
    resources = jobs_manifest()
    settings = resources[("ConfigMap", "deepfake-jobs")]["data"]
    run_dir = settings["DEEPFAKE_JOBS_RUN_DIR"]
    claim = resources[("PersistentVolumeClaim", "deepfake-jobs-run")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    pods = {name: resources[("Deployment", name)]["spec"]["template"]["spec"]
            for name in ("deepfake-jobs-api", "deepfake-jobs-worker")}
    for name, pod in pods.items():
        (container,) = pod["containers"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
        assert mounts[run_dir]["persistentVolumeClaim"]["claimName"] == "deepfake-jobs-run", name
        assert {"configMapRef": {"name": "deepfake-jobs"}} in container["envFrom"], name
        assert pod["enableServiceLinks"] is False, name  # else DEEPFAKE_JOBS_API_PORT=tcp://... from the Service
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name

    worker = pods["deepfake-jobs-worker"]
    (torchserve,) = worker["initContainers"]
    assert torchserve["image"].startswith("deepfake-detector:") and torchserve["restartPolicy"] == "Always"
    detector = Dockerfile.read()
    assert torchserve["startupProbe"]["exec"]["command"] == detector.healthcheck
    stage_files(detector, tmp_path / "srv-deepfake", [])
    key_folder = dry_run_entrypoint(detector, tmp_path / "srv-deepfake").cwd.replace(
        str(tmp_path / "srv-deepfake"), IMAGE_ROOT)
    (shared,) = [mount for mount in torchserve["volumeMounts"] if key_folder.startswith(mount["mountPath"] + "/")]
    (container,) = worker["containers"]
    (seen,) = [mount for mount in container["volumeMounts"] if mount["name"] == shared["name"]]
    assert not seen.get("readOnly"), "the worker locks a file beside key_file.json when it renews a key"
    assert settings["DEEPFAKE_JOBS_TORCHSERVE_RUN_DIR"] == seen["mountPath"] + key_folder[len(shared["mountPath"]):]
    assert "$(DEEPFAKE_JOBS_WORKERS)" in container["args"]
    assert worker["terminationGracePeriodSeconds"] > float(settings["DEEPFAKE_JOBS_PIECE_TIMEOUT_S"])
