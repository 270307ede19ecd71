"""The image's entrypoint, environment, user and folders, run on this machine as the image runs them.

No container engine here (and none in CI): ``tests.support.image`` stages the Dockerfile's ``/srv/deepfake``
under a temporary root, runs its build steps (``prepare.sh``: the user, the writable folder), and these
tests start the Dockerfile's ``ENTRYPOINT`` (tini, then ``entrypoint.sh``) with its ``ENV``, as its
``USER`` (uid 10001, group 0), and probe it with its ``HEALTHCHECK`` command. What differs from a
container: the Python on PATH is the system's, seeing this checkout's packages (the image installs the same
pins),
the listeners stay on loopback on free ports (the image opens inference and metrics to the pod network),
and tini is a subreaper rather than PID 1 (``TINI_SUBREAPER``), which is how it reaps outside a container.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests
from deepfake_detector.archive import archive_path
from deepfake_detector.verdict import Verdict
from deepfake_ops.ports import free_port

from tests.support import MODEL_NAME, OCTET, Media
from tests.support.image import Dockerfile, remap, remove_user, stage

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="creating the image's user and running as it needs root"),
    pytest.mark.skipif(shutil.which("tini") is None, reason="the image's PID 1, tini, is not installed "
                       "(make install puts it there)"),
]
DOCKERFILE = Dockerfile.read()


@dataclass
class ImageProcess:
    """The image's entrypoint running under a staged root."""

    root: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    @property
    def var(self) -> Path:
        return self.root / "var"

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.env['DEEPFAKE_INFERENCE_PORT']}"

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """The Dockerfile's HEALTHCHECK command, as the image's user with the image's environment."""
        python = str(self.root.parent / "python" / "bin" / "python")
        command = [python if word == "python" else remap(word, self.root) for word in DOCKERFILE.healthcheck]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60,
                              **as_image_user())

    def wait_healthy(self, timeout_s: float = 300) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            probe = self.healthcheck()
            if probe.returncode == 0:
                return probe.stdout.strip()
            if self.process.poll() is not None:
                raise AssertionError(f"the entrypoint exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not healthy after {timeout_s} s: {probe.stdout}{probe.stderr}\n{self.output()}")
            time.sleep(2)

    def inference_key(self) -> str:
        return json.loads((self.var / "run" / "key_file.json").read_text())["inference"]["key"]

    def output(self) -> str:
        log = self.root.parent / "entrypoint.out"
        return log.read_text(errors="replace")[-4000:] if log.exists() else ""

    def tree(self) -> list[psutil.Process]:
        parent = psutil.Process(self.process.pid)
        return [parent, *parent.children(recursive=True)]

    def stop(self) -> None:
        if self.process.poll() is None:
            for member in self.tree()[::-1]:
                member.kill()
            self.process.wait(30)


def as_image_user() -> dict[str, object]:
    return {"user": DOCKERFILE.user, "group": 0, "extra_groups": []}


def start_image(root: Path, **overrides: str) -> ImageProcess:
    """The Dockerfile's ENTRYPOINT, with its ENV (and loopback listeners on free ports), as its USER; the
    entrypoint's own defaults for the rest (LOAD_MODELS: the default archive)."""
    env = {key: remap(value, root) for key, value in DOCKERFILE.env().items()}
    env.update({
        **overrides,
        "PATH": f"{root.parent / 'python' / 'bin'}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
        "DEEPFAKE_BIND_ADDRESS": "127.0.0.1",
        "DEEPFAKE_INFERENCE_PORT": str(free_port()), "DEEPFAKE_MANAGEMENT_PORT": str(free_port()),
        "DEEPFAKE_METRICS_PORT": str(free_port()), "DEEPFAKE_GRPC_INFERENCE_PORT": str(free_port()),
        "DEEPFAKE_GRPC_MANAGEMENT_PORT": str(free_port()),
        "TINI_SUBREAPER": "1",
    })
    command = [remap(word, root) for word in DOCKERFILE.entrypoint]
    with open(root.parent / "entrypoint.out", "wb") as output:
        process = subprocess.Popen(command, env=env, cwd=remap("/srv/deepfake/var", root), stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True, **as_image_user())
    return ImageProcess(root, process, env)


def system_python() -> str | None:
    """A Python 3 outside any user's home, as the image's /usr/local/bin/python is."""
    for folder in ("/usr/local/bin", "/usr/bin"):
        found = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path=folder)
        if found:
            return found
    return None


def image_python(top: Path) -> Path:
    """A virtual environment on the system's Python that sees this checkout's packages: the image's user can
    run it, where the checkout's own interpreter may sit under a root-only home (pyenv in /root)."""
    interpreter = system_python()
    if interpreter is None:
        pytest.skip(f"no system python{sys.version_info.major}.{sys.version_info.minor} for the image's user")
    environment = top / "python"
    subprocess.run([interpreter, "-m", "venv", "--without-pip", str(environment)], check=True)
    site_packages = Path(sysconfig.get_paths()["purelib"])
    (environment / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
     / "checkout.pth").write_text(f"import site; site.addsitedir({str(site_packages)!r})\n")
    launcher = environment / "bin" / "torchserve"
    launcher.write_text(f"#!{environment}/bin/python\nimport sys\nfrom ts.model_server import start\n"
                        "sys.exit(start())\n")
    launcher.chmod(0o755)
    return environment / "bin"


@pytest.fixture(scope="module")
def staged(model_store: Path) -> Iterator[Path]:
    """The image's /srv/deepfake under a folder the image's user can reach (pytest's own are root-only)."""
    top = Path(tempfile.mkdtemp(prefix="deepfake-image-"))
    top.chmod(0o755)
    root = top / "srv-deepfake"
    created_user = stage(DOCKERFILE, root, [archive_path(model_store, MODEL_NAME, "1.0")])
    python = image_python(top) / "python"
    reachable = subprocess.run([str(python), "-c", "import deepfake_detector, ts"], capture_output=True,
                               text=True, **as_image_user())
    if reachable.returncode != 0:
        shutil.rmtree(top)
        if created_user:
            remove_user(DOCKERFILE.user)
        pytest.skip(f"uid {DOCKERFILE.user} cannot read this checkout's packages: {reachable.stderr[-300:]}")
    yield root
    shutil.rmtree(top, ignore_errors=True)
    if created_user:
        remove_user(DOCKERFILE.user)


@pytest.fixture(scope="module")
def image(staged: Path) -> Iterator[ImageProcess]:
    started = start_image(staged)
    yield started
    started.stop()


def _owners(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): path.stat().st_uid for path in root.rglob("*")}


def test_the_image_serves_a_photo_as_its_own_user(image: ImageProcess, media: type[Media]) -> None:
    before = {path: owner for path, owner in _owners(image.root).items() if not path.startswith("var")}
    status = image.wait_healthy()
    print(f"\nhealth check: {status}")
    assert "READY" in status

    answer = requests.post(f"{image.inference_url}/predictions/{MODEL_NAME}", data=media.grace_hopper.read_bytes(),
                           headers=OCTET | {"Authorization": f"Bearer {image.inference_key()}"}, timeout=120)
    assert answer.status_code == 200, answer.text
    verdict = Verdict.from_json(answer.json(), "image")
    assert verdict.face_detected and verdict.model.name == MODEL_NAME

    processes = image.tree()
    assert {member.uids().real for member in processes} == {DOCKERFILE.user}, "everything runs as the image's user"
    assert any("model_service_worker" in " ".join(member.cmdline()) for member in processes), "a worker runs"
    written = _owners(image.var)
    assert written and set(written.values()) == {DOCKERFILE.user}
    assert any(path.startswith("tmp/models") for path in written), "archives unpack into the user's TEMP"
    after = {path: owner for path, owner in _owners(image.root).items() if not path.startswith("var")}
    assert after == before, "nothing is written outside /srv/deepfake/var"


def test_sigterm_to_the_entrypoint_stops_every_process_within_seconds(image: ImageProcess) -> None:
    image.wait_healthy()
    members = image.tree()
    names = sorted({member.name() for member in members})
    assert len(members) >= 4, names  # tini, the launcher, java, a worker
    started = time.monotonic()
    os.kill(image.process.pid, signal.SIGTERM)  # what `docker stop` and the kubelet send to PID 1
    image.process.wait(30)
    gone, alive = psutil.wait_procs(members, timeout=15)
    elapsed = time.monotonic() - started
    print(f"\n{len(gone)} of {len(members)} processes ({', '.join(names)}) ended in {elapsed:.1f} s, "
          f"tini exit {image.process.returncode}")
    assert not alive, [member.cmdline() for member in alive]
    assert elapsed < 15


def test_the_health_check_fails_while_no_model_is_loaded(staged: Path, tmp_path: Path) -> None:
    """``/ping`` answers Healthy with no model: a probe that only pinged would send traffic to a pod that
    answers 404."""
    empty_store = staged.parent / "empty-model-store"
    empty_store.mkdir(exist_ok=True)
    bare = start_image(staged, LOAD_MODELS="", MODEL_STORE=str(empty_store))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                ping = requests.get(f"{bare.inference_url}/ping", timeout=10,
                                    headers={"Authorization": f"Bearer {bare.inference_key()}"})
                break
            except (OSError, ValueError):  # no key file yet, or the listener not open yet
                assert time.monotonic() < deadline, bare.output()
                time.sleep(1)
        assert ping.status_code == 200 and "Healthy" in ping.text
        probe = bare.healthcheck()
        print(f"\nhealth check without a model: exit {probe.returncode}: {probe.stdout.strip()}")
        assert probe.returncode == 1 and "no model is registered" in probe.stdout
    finally:
        bare.stop()
