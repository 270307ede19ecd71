"""The TorchServe handler without the Java frontend, against a real archive unpacked from disk.

The stand-in for TorchServe's context is the one golden requests use at build time
(``deepfake_ops.archive_handler.ArchiveContext``): it reads the archive's manifest and model-config.yaml and
records the per-request statuses the handler sets; everything else (archive, weights, pipeline) is real. The
handler runs in this process, where the repository's ``deepfake_detector`` (the code the archive packs) is
already loaded; that an archive answers with its own packed copy is checked where it matters, by golden
recording, which runs in a fresh process and refuses any other copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from deepfake_detector.archive import WEIGHTS_FILE, Archive, ArchiveError, archive_path
from deepfake_detector.media import VIDEO_TMPDIR_ENV
from deepfake_ops.archive_handler import ArchiveContext, load_handler_class

from tests.support import MODEL_NAME


def unpack(model_store: Path, version: str, target: Path) -> Path:
    return Archive(archive_path(model_store, MODEL_NAME, version)).extract(target)


@pytest.fixture(scope="module")
def handler_and_context(model_store, tmp_path_factory) -> tuple[Any, ArchiveContext]:
    model_dir = unpack(model_store, "1.0", tmp_path_factory.mktemp("v1"))
    context = ArchiveContext(model_dir)
    handler = load_handler_class(model_dir)()
    handler.initialize(context)
    return handler, context


def test_a_batch_gets_one_response_and_status_per_request(handler_and_context, media):
    handler, context = handler_and_context
    context.statuses.clear()
    batch = [
        {"body": media.astronaut.read_bytes()},
        {"body": b"\x00\x01 definitely not media"},
        {"data": bytearray(media.face_video.read_bytes())},
        {"body": {"image": "face.jpg"}},  # what TorchServe hands over for a JSON body
        {"file": media.cat.read_bytes()},  # a multipart form field
        {"body": b""},
    ]
    responses = handler.handle(batch, context)
    assert len(responses) == len(batch)
    assert context.statuses == {1: 415, 3: 415, 5: 400}
    assert responses[0]["face_detected"] is True and responses[0]["model"]["version"] == "1.0"
    assert responses[2]["media"]["type"] == "video"
    assert responses[4]["face_detected"] is False
    assert responses[1]["error"] == "unsupported_media" and "octet-stream" in responses[3]["detail"]
    assert responses[5] == {"error": "empty_body", "detail": responses[5]["detail"], "retryable": False}
    assert all(context.content_types[i] == "application/json" for i in range(len(batch)))
    json.dumps(responses)  # every response is JSON-serialisable


def test_untrained_weights_are_announced(handler_and_context, media):
    handler, context = handler_and_context
    response = handler.handle([{"body": media.grace_hopper.read_bytes()}], context)[0]
    assert response["model"]["trained"] is False


def test_handler_settings_come_from_the_archive(model_store, tmp_path, media):
    model_dir = unpack(model_store, "2.0", tmp_path)
    context = ArchiveContext(model_dir)
    handler = load_handler_class(model_dir)()
    handler.initialize(context)
    response = handler.handle([{"body": media.face_video.read_bytes()}], context)[0]
    assert response["sampled_frame_indices"] == list(range(0, 120, 20))
    assert response["threshold"] == 0.6 and response["model"]["version"] == "2.0"


def test_tampered_weights_are_refused_at_load(model_store, tmp_path):
    model_dir = unpack(model_store, "1.0", tmp_path)
    weights = model_dir / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    handler = load_handler_class(model_dir)()
    with pytest.raises(ArchiveError, match="sha256"):
        handler.initialize(ArchiveContext(model_dir))


@pytest.fixture
def full_video_temp_area(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, media) -> Iterator[Path]:
    """A real 1 MiB tmpfs as the video temp area (as the manifest's memory volume with its size limit),
    filled but for less room than the face video needs."""
    area = tmp_path / "video-tmp"
    area.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "tmpfs", str(area)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root (CI runs as root): {mounted.stderr.strip()}")
    try:
        room = shutil.disk_usage(area).free - len(media.face_video.read_bytes()) // 2
        (area / "filler").write_bytes(b"\0" * room)
        monkeypatch.setenv(VIDEO_TMPDIR_ENV, str(area))
        yield area
    finally:
        subprocess.run(["umount", str(area)], check=True)


def test_a_full_video_temp_area_fails_that_request_alone_and_retryably(handler_and_context, media,
                                                                      full_video_temp_area) -> None:
    handler, context = handler_and_context
    context.statuses.clear()
    context.headers.clear()
    batch = [{"body": media.astronaut.read_bytes()}, {"body": media.face_video.read_bytes()},
             {"body": media.cat.read_bytes()}]
    responses = handler.handle(batch, context)
    print(f"\n{responses[1]}")
    assert context.statuses == {1: 503}
    assert context.headers == {1: {"Retry-After": "1"}}
    assert responses[1]["error"] == "temp_space_full" and responses[1]["retryable"] is True
    assert str(full_video_temp_area) in responses[1]["detail"]
    assert responses[0]["face_detected"] is True and responses[2]["face_detected"] is False
    assert os.listdir(full_video_temp_area) == ["filler"], "a failed write must leave no partial file"

    (full_video_temp_area / "filler").unlink()  # the area drains: the retry succeeds
    context.statuses.clear()
    retried = handler.handle([batch[1]], context)[0]
    assert context.statuses == {} and retried["media"]["type"] == "video"
    assert os.listdir(full_video_temp_area) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a GPU assignment on a machine without CUDA")
def test_a_worker_assigned_a_gpu_it_cannot_use_refuses_to_load(model_store, tmp_path) -> None:
    """TorchServe assigns GPU ids from what its frontend sees; a worker whose CUDA does not work must fail
    with the reason, not serve silently on the CPU."""
    model_dir = unpack(model_store, "1.0", tmp_path)
    context = ArchiveContext(model_dir)
    context.system_properties["gpu_id"] = 0
    handler = load_handler_class(model_dir)()
    with pytest.raises(RuntimeError, match=r"assigned GPU 0.*CUDA is not usable"):
        handler.initialize(context)
    assert not handler.initialized
