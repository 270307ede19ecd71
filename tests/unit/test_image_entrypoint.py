"""The image's start-up, read from the Dockerfile and run with a stand-in for TorchServe.

``entrypoint.sh`` turns the image's environment into TorchServe's config and command line. Run here with
the Dockerfile's ``ENV`` (``/srv/deepfake`` moved to a temporary folder) and a ``torchserve`` on PATH that
records how it was called: the listeners the pod exposes, the folders it writes, and that odd characters in
a path reach the config verbatim. ``tests/server/test_image.py`` starts the real thing.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.image import Dockerfile, dry_run_entrypoint, stage_files

DOCKERFILE = Dockerfile.read()


def staged(tmp_path: Path) -> Path:
    root = tmp_path / "srv-deepfake"
    stage_files(DOCKERFILE, root, [])
    return root


def test_the_image_exposes_inference_and_metrics_and_keeps_management_on_loopback(tmp_path: Path) -> None:
    root = staged(tmp_path)
    run = dry_run_entrypoint(DOCKERFILE, root)
    assert run.config["inference_address"] == "http://0.0.0.0:8080"
    assert run.config["metrics_address"] == "http://0.0.0.0:8082"
    assert run.config["management_address"] == "http://127.0.0.1:8081"
    assert run.config["grpc_inference_address"] == run.config["grpc_management_address"] == "127.0.0.1"
    assert run.config["disable_token_authorization"] == "false"
    assert run.config["model_store"] == f"{root}/model-store"
    assert run.config["allowed_urls"] == f"file://{root}/model-store/.*"
    assert run.config["load_models"] == "deepfake_detector-1.0.mar"
    assert run.arguments[:3] == ["--start", "--foreground", "--ncs"]


def test_everything_written_goes_under_var(tmp_path: Path) -> None:
    root = staged(tmp_path)
    run = dry_run_entrypoint(DOCKERFILE, root)
    var = f"{root}/var"
    assert run.cwd == f"{var}/run", "TorchServe writes key_file.json into the folder it starts in"
    for key in ("HOME", "TEMP", "TMPDIR", "LOG_LOCATION", "METRICS_LOCATION", "DEEPFAKE_AUDIT_LOG",
                "DEEPFAKE_VIDEO_TMPDIR"):
        assert run.env[key].startswith(f"{var}/"), (key, run.env[key])
    assert run.env["DEEPFAKE_VIDEO_TMPDIR"] == f"{var}/video-tmp"
    assert run.env["HF_HUB_OFFLINE"] == "1"
    for folder in ("home", "tmp", "logs", "video-tmp", "run"):
        assert (root / "var" / folder).is_dir(), folder


def test_paths_with_sed_metacharacters_reach_the_config_verbatim(tmp_path: Path) -> None:
    root = staged(tmp_path)
    odd_store = tmp_path / "store #1 & co \\ x"
    odd_store.mkdir()
    run = dry_run_entrypoint(DOCKERFILE, root, MODEL_STORE=str(odd_store), LOAD_MODELS="a#1.mar,b&2.mar",
                             DEEPFAKE_BIND_ADDRESS="127.0.0.1", DEEPFAKE_INFERENCE_PORT="18080")
    assert run.config["model_store"] == str(odd_store)
    assert run.config["allowed_urls"] == f"file://{odd_store}/.*"
    assert run.config["load_models"] == "a#1.mar,b&2.mar"
    assert run.config["inference_address"] == "http://127.0.0.1:18080"
