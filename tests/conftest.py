"""Fixtures every level shares: real media, the seeded weights, real archives, real TorchServe instances.

Archives are built once per test session by torch-model-archiver into a temporary model store; each
server fixture starts its own TorchServe on free loopback ports in its own run folder (only tests under
``tests/server/`` use those, and only they need Java).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deepfake_detector.archive import GOLDEN_FILE, WEIGHTS_FILE, archive_path
from deepfake_detector.config import PipelineSettings
from deepfake_detector.pipeline import DetectionPipeline
from deepfake_detector.untrained import build_detector
from deepfake_detector.weights import save_weights
from deepfake_ops.build_mar import build_archive
from deepfake_ops.golden import PROBABILITY_TOLERANCE
from deepfake_ops.load_media import LoadMedia, make_load_media, source_video, write_long_video
from deepfake_ops.ports import free_port
from deepfake_ops.torchserve import TorchServeInstance
from deepfake_training import prepare as training_prepare
from deepfake_training.trainer import TrainSettings, train

from tests.support import MODEL_NAME, ONE_WORKER, TRAINING_CROP_SIZE, TRAINING_SPLITS, Media, StartServer
from tests.support.archives import flip_last_byte, golden_store, link_archive, rewrite_archive, shift_golden_probability


@pytest.fixture(scope="session")
def media() -> type[Media]:
    return Media


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained seeded default, as `make mar` builds it."""
    path = tmp_path_factory.mktemp("weights") / "default.safetensors"
    save_weights(build_detector(seed=0), path)
    return path


@pytest.fixture(scope="session")
def default_pipeline(weights_file: Path) -> DetectionPipeline:
    """The seeded default with the default settings, in-process (PyTorch forward)."""
    return DetectionPipeline.from_weights(weights_file)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory, weights_file: Path) -> Path:
    """A model store holding version 1.0 (default settings) and 2.0 (other handler settings)."""
    store = tmp_path_factory.mktemp("model_store")
    build_archive("1.0", weights_file, MODEL_NAME, store, serving_overrides=ONE_WORKER)
    build_archive("2.0", weights_file, MODEL_NAME, store, serving_overrides=ONE_WORKER,
                  handler_overrides={"sampling": "every_nth:20", "max_frames": 6, "threshold": 0.6})
    return store


@pytest.fixture(scope="session")
def load_media(tmp_path_factory: pytest.TempPathFactory) -> LoadMedia:
    """The load tests' media (resized real photos, a 720p clip of real frames), made once."""
    return make_load_media(tmp_path_factory.mktemp("load_media"))


@pytest.fixture(scope="session")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """90 s of 720p H.264 at 25 fps from the carphone video's real frames, a keyframe every 250 frames, B-frames."""
    path = tmp_path_factory.mktemp("long_video") / "long_720p_90s.mp4"
    write_long_video(source_video(), path, seconds=90)
    return path


@pytest.fixture(scope="session")
def settings_v2() -> PipelineSettings:
    return PipelineSettings(sampling="every_nth:20", max_frames=6, threshold=0.6)


@pytest.fixture(scope="session")
def rollout_store(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1.0 and 2.0 with golden requests, 3.0 = 2.0 with an altered golden answer, 4.0 = 2.0 with altered
    weights (each consistent otherwise: it calls itself 3.0 / 4.0 everywhere)."""
    goldens = golden_store(model_store, tmp_path_factory.getbasetemp())
    store = tmp_path_factory.mktemp("rollout_store")
    for version in ("1.0", "2.0"):
        link_archive(archive_path(goldens, MODEL_NAME, version), store)
    v2 = archive_path(store, MODEL_NAME, "2.0")
    rewrite_archive(v2, archive_path(store, MODEL_NAME, "3.0"), "3.0",
                    {GOLDEN_FILE: shift_golden_probability(10 * PROBABILITY_TOLERANCE)})
    rewrite_archive(v2, archive_path(store, MODEL_NAME, "4.0"), "4.0", {WEIGHTS_FILE: flip_last_byte})
    return store


@pytest.fixture(scope="session")
def faces(tmp_path_factory: pytest.TempPathFactory, media: type[Media]) -> Path:
    """index.csv of real face crops: the carphone video's frames (train), two face photos (val)."""
    root = tmp_path_factory.mktemp("faces_dataset")
    (root / "real" / "carphone").mkdir(parents=True)
    (root / "real" / "carphone" / "pristine.mp4").write_bytes(media.face_video.read_bytes())
    for path in (media.astronaut, media.grace_hopper):
        (root / "real" / path.name).write_bytes(path.read_bytes())
    options = training_prepare.PrepareOptions(frame_stride=5, max_frames=24, crop_size=TRAINING_CROP_SIZE,
                                              split_overrides=TRAINING_SPLITS)
    return training_prepare.prepare(root, root / "faces", options)


@pytest.fixture(scope="session")
def trained(faces: Path, tmp_path_factory: pytest.TempPathFactory):
    """A checkpoint written by train(): two epochs of the whole loop, augmentations included."""
    settings = TrainSettings(
        faces, tmp_path_factory.mktemp("run"), backbone="tf_efficientnet_lite0", pretrained="packaged",
        input_size=TRAINING_CROP_SIZE, epochs=2, batch_size=16, learning_rate=1e-3, self_blend=True,
        trainable_blocks=2,
    )
    return settings, train(settings)


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
