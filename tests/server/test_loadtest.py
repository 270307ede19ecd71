"""A short real Locust run against a real TorchServe: every answer validated as a verdict, the reports
written, and refused requests counted as failures, not as throughput."""

from __future__ import annotations

import pytest
from deepfake_detector.archive import archive_path
from deepfake_ops.loadtest import plot_history, run_locust, summarize, warm_up

from tests.support import MODEL_NAME


@pytest.mark.server
def test_locust_run_checks_every_answer_and_writes_its_reports(start_server, model_store, media, tmp_path):
    instance = start_server(model_store, [archive_path(model_store, MODEL_NAME, "1.0").name,
                                          archive_path(model_store, MODEL_NAME, "2.0").name])
    token = instance.keys()["inference"]
    warm_up(instance, MODEL_NAME, "2.0", media.astronaut.read_bytes(), count=1)
    prefix = tmp_path / "images"
    summary = run_locust(instance.inference_url, token, prefix, "MixedUser", users=2, run_time="15s",
                         html=tmp_path / "images.html", warmup_s=0,
                         extra_env={"DFD_IMAGE_SIZES": "480p", "DFD_VIDEOS": "carphone",
                                    "DFD_MODEL_VERSION": "2.0", "DFD_MEDIA_DIR": str(tmp_path / "media")})
    assert summary.requests > 0 and summary.failures == 0, summary
    assert summary.steady_requests_per_s > 0 and summary.p50_ms > 0
    assert (tmp_path / "images.html").stat().st_size > 0
    png = plot_history(prefix, tmp_path / "images.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summarize(prefix, 0).requests == summary.requests

    # A wrong token and an unknown version are counted as failures, not as throughput.
    refused = run_locust(instance.inference_url, "not-the-token", tmp_path / "refused", "ImageUser", users=1,
                         run_time="3s", warmup_s=0,
                         extra_env={"DFD_IMAGE_SIZES": "480p", "DFD_MEDIA_DIR": str(tmp_path / "media")})
    assert refused.requests > 0 and refused.failures == refused.requests
    unknown = run_locust(instance.inference_url, token, tmp_path / "unknown", "ImageUser", users=1,
                         run_time="3s", warmup_s=0,
                         extra_env={"DFD_IMAGE_SIZES": "480p", "DFD_MODEL_VERSION": "9.9",
                                    "DFD_MEDIA_DIR": str(tmp_path / "media")})
    assert unknown.requests > 0 and unknown.failures == unknown.requests
