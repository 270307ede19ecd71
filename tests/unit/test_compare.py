"""The A/B comparison's parts: metrics per version (ROC AUC null, not NaN, with one class), percentiles,
labelled sets from a folder or a CSV, and one-line refusals of the client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from deepfake_ops.compare import Outcome, Sample, load_labelled_set, percentile, version_metrics
from deepfake_ops.torchserve import Endpoint, TorchServeClient


def test_metrics_and_percentiles() -> None:
    samples = [Sample(Path(f"{n}.png"), fake) for n, fake in enumerate([False, False, True, True])]
    outcomes = [Outcome(200, p, "FAKE" if p >= 0.5 else "REAL", 0.1) for p in (0.1, 0.4, 0.35, 0.8)]
    metrics = version_metrics(samples, outcomes)
    assert metrics["roc_auc"] == pytest.approx(0.75) and metrics["accuracy"] == pytest.approx(0.75)
    one_class = version_metrics(samples[2:], outcomes[2:])
    assert one_class["roc_auc"] is None, "JSON null, not NaN, when a class is missing"
    assert percentile([10, 20, 30, 40], 50) == 25
    assert percentile([10, 20, 30, 40], 90) == pytest.approx(37)
    assert percentile([], 50) is None


def test_labelled_set_from_folder_and_csv(tmp_path: Path, media: Any) -> None:
    folder = tmp_path / "set"
    (folder / "real").mkdir(parents=True)
    (folder / "fake" / "deep").mkdir(parents=True)
    (folder / "real" / "a.png").write_bytes(media.astronaut.read_bytes())
    (folder / "fake" / "deep" / "b.jpg").write_bytes(media.grace_hopper.read_bytes())
    samples = load_labelled_set(folder)
    assert [(s.path.name, s.is_fake) for s in samples] == [("a.png", False), ("b.jpg", True)]

    listing = tmp_path / "labels.csv"
    listing.write_text(f"path,label\nset/real/a.png,real\n{folder / 'fake' / 'deep' / 'b.jpg'},1\n")
    from_csv = load_labelled_set(listing)
    assert [(s.path.name, s.is_fake) for s in from_csv] == [("a.png", False), ("b.jpg", True)]
    listing.write_text("set/real/a.png,maybe\n")
    with pytest.raises(ValueError, match="not real, fake"):
        load_labelled_set(listing)
    with pytest.raises(ValueError, match="real/ and fake/"):
        load_labelled_set(folder / "real")


def test_refusal_wording_for_token_and_server_errors(tmp_path: Path) -> None:
    """401 and 5xx are hard to provoke on a healthy server: the wording is checked on built answers."""
    client = TorchServeClient(Endpoint(run_dir=tmp_path, management_url="http://127.0.0.1:8081"))

    def answer(status: int, body: dict[str, Any]) -> requests.Response:
        response = requests.Response()
        response.status_code = status
        response._content = json.dumps(body).encode()
        return response

    unauthorized = client.refusal(answer(401, {"message": "Unauthorized"}), "promote 2.0", "management", {})
    assert "refused the management token" in str(unauthorized) and "TS_MANAGEMENT_TOKEN" in str(unauthorized)
    assert "/token?type=management" in str(unauthorized)
    failed = client.refusal(answer(500, {"code": 500, "message": "Failed to start workers"}), "register",
                            "management", {})
    assert "HTTP 500" in str(failed) and "Failed to start workers" in str(failed)
    assert str(tmp_path / "logs" / "model_log.log") in str(failed) and "\n" not in str(failed)
