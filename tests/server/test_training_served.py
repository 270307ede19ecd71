"""A checkpoint written by training, packed into an archive, served by a real TorchServe with the
probabilities of the in-process pipeline."""

from __future__ import annotations

import pytest
import requests
from deepfake_detector import DetectionPipeline
from deepfake_ops.build_mar import build_archive

from tests.support import ONE_WORKER


@pytest.mark.server
def test_trained_checkpoint_serves_from_an_archive(trained, tmp_path_factory, start_server, media) -> None:
    _, result = trained
    store = tmp_path_factory.mktemp("trained_store")
    archive = build_archive("7.0", result.weights, model_store=store, serving_overrides=ONE_WORKER)
    server = start_server(store, [archive.name])
    response = requests.post(
        f"{server.inference_url}/predictions/deepfake_detector/7.0", data=media.astronaut.read_bytes(),
        headers={**server.headers("inference"), "Content-Type": "application/octet-stream"}, timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["trained"] is True and body["model"]["backbone"] == "tf_efficientnet_lite0"
    expected = DetectionPipeline.from_weights(result.weights).score(media.astronaut.read_bytes())
    assert body["fake_probability"] == pytest.approx(expected.fake_probability, abs=1e-4)
