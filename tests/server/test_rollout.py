"""Model versions on a real TorchServe: integrity, deploy/verify/promote/rollback/retire, the A/B comparison.

Each step is run through the command users run (``deepfake-rollout``), and the server's own answers
(``GET /models/NAME/all`` and ``GET /models/NAME``, which describes the default) are checked after it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from deepfake_detector.archive import Archive
from deepfake_ops.golden import GOLDEN_INPUTS, PROBABILITY_TOLERANCE
from deepfake_ops.torchserve import Endpoint, ServerRefusal, TorchServeClient, TorchServeInstance

from tests.support import MODEL_NAME
from tests.support.archives import make_labelled_set, run_command


@pytest.fixture(scope="module")
def live(start_server: Any, rollout_store: Path) -> TorchServeInstance:
    """A server started with version 1.0 only, as `make serve` would start it."""
    return start_server(rollout_store, [f"{MODEL_NAME}-1.0.mar"])


def rollout(live: TorchServeInstance, *args: str):
    return run_command("rollout", "--run-dir", str(live.run_dir), *args)


def registered(live: TorchServeInstance) -> dict[str, list[str]]:
    """The server's own list: version -> worker states (GET /models/NAME/all)."""
    return {entry["modelVersion"]: [worker["status"] for worker in entry["workers"]]
            for entry in live.describe(MODEL_NAME)}


def default(live: TorchServeInstance) -> str:
    answer = requests.get(f"{live.management_url}/models/{MODEL_NAME}", headers=live.headers("management"),
                          timeout=10)
    answer.raise_for_status()
    return answer.json()[0]["modelVersion"]


def history(live: TorchServeInstance) -> dict[str, Any]:
    return json.loads((live.run_dir / "rollout_history.json").read_text())


@pytest.mark.server
def test_deploy_refuses_an_archive_with_altered_weights(live: TorchServeInstance) -> None:
    before = registered(live)
    result = rollout(live, "deploy", "4.0")
    assert result.returncode == 1
    assert "altered or corrupted" in result.stderr and "not deployed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert registered(live) == before and "4.0" not in registered(live)


@pytest.mark.server
def test_refusals_are_one_line_that_says_what_to_do(live: TorchServeInstance) -> None:
    cases = [
        (("status", "--json"), {"TS_MANAGEMENT_TOKEN": "wrong"}, "the server refused the management token"),
        (("deploy", "8.0"), {}, "no archive"),
        (("verify", "2.0"), {}, "not registered on the server: `deploy 2.0` first"),
        (("retire", "9.9"), {}, "9.9 is not registered"),
        (("retire", "1.0"), {}, "is the default"),
    ]
    for args, env, expected in cases:
        result = run_command("rollout", "--run-dir", str(live.run_dir), *args, env=env)
        assert result.returncode == 1 and expected in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
    stopped = run_command("rollout", "--run-dir", str(live.run_dir), "--management-url",
                         "http://127.0.0.1:9", "rollback")
    assert stopped.returncode == 1 and "no TorchServe answers at http://127.0.0.1:9" in stopped.stderr

    # The server's own refusals, as the tool words them (409 and 404 from TorchServe itself).
    client = TorchServeClient(Endpoint.from_run_dir(live.run_dir))
    with pytest.raises(ServerRefusal, match=r"HTTP 409: Model version 1.0 is already registered.* -> retire"):
        client.management("POST", "/models", "register", params={"url": f"{MODEL_NAME}-1.0.mar"},
                          hints={409: "retire it first"})
    with pytest.raises(ServerRefusal, match=r"HTTP 404: .*9\.9.* -> deploy it first"):
        client.management("PUT", f"/models/{MODEL_NAME}/9.9/set-default", "set default",
                          hints={404: "deploy it first"})
    assert registered(live) == {"1.0": ["READY"]} and default(live) == "1.0"


@pytest.mark.server
def test_deploy_verify_promote_rollback_retire(live: TorchServeInstance) -> None:
    assert registered(live) == {"1.0": ["READY"]} and default(live) == "1.0"

    status = json.loads(rollout(live, "status", "--json").stdout)
    rows = {row["version"]: row for row in status["versions"]}
    assert rows["1.0"]["registered"] and rows["1.0"]["default"] and not rows["2.0"]["registered"]
    assert rows["2.0"]["golden_requests"] == len(GOLDEN_INPUTS) and rows["2.0"]["trained"] is False
    assert len(rows["2.0"]["weights_sha256"]) == 64 and rows["2.0"]["created"]

    refused = rollout(live, "rollback")  # nothing was promoted yet: no previous default to go back to
    assert refused.returncode == 1 and "no previous default" in refused.stderr
    assert default(live) == "1.0"

    assert rollout(live, "deploy", "2.0", "--workers", "1").returncode == 0
    assert registered(live) == {"1.0": ["READY"], "2.0": ["READY"]} and default(live) == "1.0"
    again = rollout(live, "deploy", "2.0")
    assert again.returncode == 1 and "already registered" in again.stderr
    # TorchServe refuses to delete a default that has siblings (403); the only version it would delete,
    # which is why `retire` refuses the default itself, before asking.
    client = TorchServeClient(Endpoint.from_run_dir(live.run_dir))
    with pytest.raises(ServerRefusal, match="HTTP 403: Cannot remove default version"):
        client.management("DELETE", f"/models/{MODEL_NAME}/1.0", "unregister")

    verified = rollout(live, "verify", "2.0")
    assert verified.returncode == 0, verified.stderr
    assert f"{len(GOLDEN_INPUTS)} golden requests match" in verified.stdout

    assert rollout(live, "promote", "2.0").returncode == 0
    assert default(live) == "2.0" and set(registered(live)) == {"1.0", "2.0"}
    assert history(live)["defaults"][MODEL_NAME] == ["1.0", "2.0"]

    # The state lives in the run folder, so this separate invocation knows where to go back to.
    assert rollout(live, "rollback").returncode == 0
    assert default(live) == "1.0" and set(registered(live)) == {"1.0", "2.0"}

    refused = rollout(live, "retire", "1.0")  # the default cannot be retired
    assert refused.returncode == 1 and "is the default" in refused.stderr
    assert set(registered(live)) == {"1.0", "2.0"} and default(live) == "1.0"

    assert rollout(live, "promote", "2.0").returncode == 0 and default(live) == "2.0"
    assert rollout(live, "retire", "1.0").returncode == 0
    assert registered(live) == {"2.0": ["READY"]} and default(live) == "2.0"

    gone = rollout(live, "rollback")  # the previous default was retired: say so, change nothing
    assert gone.returncode == 1 and "no longer registered" in gone.stderr
    assert default(live) == "2.0"
    actions = [(e["action"], e["version"]) for e in history(live)["events"]]
    assert actions == [("deploy", "2.0"), ("promote", "2.0"), ("rollback", "1.0"), ("promote", "2.0"),
                       ("retire", "1.0")]


@pytest.mark.server
def test_verify_fails_on_altered_golden_answers(live: TorchServeInstance) -> None:
    assert rollout(live, "deploy", "3.0").returncode == 0  # its weights are intact: deploy accepts it
    assert registered(live)["3.0"] == ["READY"]
    before = default(live)

    result = rollout(live, "verify", "3.0")
    assert result.returncode == 1
    assert "MISMATCH astronaut.png" in result.stdout and "fake_probability" in result.stdout
    assert "FAILED verification on 1 of" in result.stderr

    promoted = rollout(live, "promote", "3.0")  # promote verifies first, and stops
    assert promoted.returncode == 1 and default(live) == before

    assert rollout(live, "retire", "3.0").returncode == 0 and "3.0" not in registered(live)


@pytest.mark.server
def test_compare_versions_on_a_labelled_set(live: TorchServeInstance, rollout_store: Path, media: Any,
                                            tmp_path: Path) -> None:
    for version in ("1.0", "2.0"):
        if version not in registered(live):
            assert rollout(live, "deploy", version).returncode == 0
    golden = Archive(rollout_store / f"{MODEL_NAME}-1.0.mar").golden()
    assert golden
    boxes = {entry["name"].split(".")[0]: entry["response"]["faces"][0]["box"]
             for entry in golden["requests"] if entry["name"] in ("astronaut.png", "grace_hopper.jpg")}
    data = make_labelled_set(tmp_path / "labelled", {"astronaut": media.astronaut,
                                                     "grace_hopper": media.grace_hopper}, boxes)
    report_file = tmp_path / "compare.json"
    result = run_command("compare", str(data), "--a", "1.0", "--b", "2.0",
                        "--run-dir", str(live.run_dir), "--json", str(report_file))
    assert result.returncode == 0, result.stderr
    report = json.loads(report_file.read_text())
    assert report["inputs"] == 6 and report["fake_inputs"] == 4
    for version in ("1.0", "2.0"):
        metrics = report["versions"][version]
        assert metrics["errors"] == 0 and 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["roc_auc"] <= 1
        latency = metrics["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    for row in report["per_input"]:  # both versions really answered, each under its own name
        assert row["1.0"]["status"] == row["2.0"]["status"] == 200
    assert report["agreement"]["compared"] == 6
    # Same weights, other serving settings: probabilities agree on images, labels follow each threshold.
    assert report["agreement"]["max_abs_probability_difference"] < PROBABILITY_TOLERANCE
    for row in report["per_input"]:
        for version, threshold in (("1.0", 0.5), ("2.0", 0.6)):
            expected = "FAKE" if row[version]["fake_probability"] >= threshold else "REAL"
            assert row[version]["label"] == expected
    assert "ROC AUC" in result.stdout and "latency p99 ms" in result.stdout
