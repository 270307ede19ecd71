"""Model versions on a real TorchServe: golden requests, integrity, deploy/verify/promote/rollback/retire.

Each step is run through the CLI users run (``scripts/rollout.py``), and the server's own answers
(``GET /models/NAME/all`` and ``GET /models/NAME``, which describes the default) are checked after it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import requests
from compare_versions import load_labelled_set, percentile, roc_auc
from golden import GOLDEN_INPUTS, PROBABILITY_TOLERANCE, compare_response, read_golden, sha256_bytes
from rollout_helpers import (
    MODEL_NAME,
    flip_last_byte,
    golden_store,
    link_archive,
    make_labelled_set,
    rewrite_archive,
    run_script,
    shift_golden_probability,
)
from server import TorchServeInstance
from torchserve_client import Endpoint, ServerRefusal, TorchServeClient

# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def rollout_store(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1.0 and 2.0 with golden requests, 3.0 = 2.0 with an altered golden answer, 4.0 = 2.0 with altered
    weights (each consistent otherwise: it calls itself 3.0 / 4.0 everywhere)."""
    goldens = golden_store(model_store, tmp_path_factory.getbasetemp())
    store = tmp_path_factory.mktemp("rollout_store")
    for version in ("1.0", "2.0"):
        link_archive(goldens / f"{MODEL_NAME}-{version}.mar", store)
    v2 = store / f"{MODEL_NAME}-2.0.mar"
    rewrite_archive(v2, store / f"{MODEL_NAME}-3.0.mar", "3.0",
                    {"golden.json": shift_golden_probability(10 * PROBABILITY_TOLERANCE)})
    rewrite_archive(v2, store / f"{MODEL_NAME}-4.0.mar", "4.0", {"weights.safetensors": flip_last_byte})
    return store


@pytest.fixture(scope="module")
def live(start_server: Any, rollout_store: Path) -> TorchServeInstance:
    """A server started with version 1.0 only, as `make serve` would start it."""
    return start_server(rollout_store, [f"{MODEL_NAME}-1.0.mar"])


def rollout(live: TorchServeInstance, *args: str):
    return run_script("rollout.py", "--run-dir", str(live.run_dir), *args)


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


# ------------------------------------------------------------------------------------ golden requests


def test_golden_requests_are_the_archives_own_answers(rollout_store: Path, media: Any) -> None:
    v1, v2 = (read_golden(rollout_store / f"{MODEL_NAME}-{v}.mar") for v in ("1.0", "2.0"))
    assert v1 and v2
    for golden, version in ((v1, "1.0"), (v2, "2.0")):
        assert golden["model_version"] == version
        entries = {entry["name"]: entry for entry in golden["requests"]}
        assert list(entries) == [item.name for item in GOLDEN_INPUTS]
        assert entries["astronaut.png"]["sha256"] == sha256_bytes(media.astronaut.read_bytes())
        assert entries["carphone.mp4"]["sha256"] == sha256_bytes(media.face_video.read_bytes())
        astronaut = entries["astronaut.png"]["response"]
        assert entries["astronaut.png"]["status"] == 200 and astronaut["face_detected"]
        assert len(astronaut["faces"]) == 1 and astronaut["model"]["version"] == version
        assert entries["grace_hopper.jpg"]["response"]["face_detected"]
        assert entries["chelsea.png"]["response"]["face_detected"] is False
        assert entries["astronaut-truncated.png"]["status"] == 422
        assert entries["astronaut-truncated.png"]["response"]["error"] == "corrupt_media"
    # Each archive's answers follow its own settings (2.0: frame_stride 20, max_frames 4, threshold 0.6).
    video = {v: next(e for e in g["requests"] if e["name"] == "carphone.mp4")["response"]
             for v, g in (("1.0", v1), ("2.0", v2))}
    assert video["1.0"]["sampled_frame_indices"] == list(range(0, 120, 10))
    assert video["2.0"]["sampled_frame_indices"] == [0, 20, 40, 60]
    assert video["2.0"]["threshold"] == 0.6


def test_make_mar_records_golden_requests(weights_file: Path, tmp_path: Path) -> None:
    """`make mar` runs build_mar.py's CLI, which records golden requests unless given --no-golden."""
    built = run_script("build_mar.py", "--version", "7.0", "--weights", str(weights_file),
                       "--model-store", str(tmp_path), "--set", "max_frames=2")
    assert built.returncode == 0, built.stderr
    golden = read_golden(tmp_path / f"{MODEL_NAME}-7.0.mar")
    assert golden and golden["model_version"] == "7.0"
    video = next(e for e in golden["requests"] if e["name"] == "carphone.mp4")["response"]
    assert video["sampled_frame_indices"] == [0, 10]  # the archive's own max_frames=2
    with zipfile.ZipFile(tmp_path / f"{MODEL_NAME}-7.0.mar") as mar:
        assert mar.testzip() is None and "weights.safetensors" in mar.namelist()


def test_compare_response_applies_the_stated_tolerances(rollout_store: Path) -> None:
    golden = read_golden(rollout_store / f"{MODEL_NAME}-1.0.mar")
    assert golden
    recorded = golden["requests"][0]["response"]
    assert compare_response(200, recorded, 200, json.loads(json.dumps(recorded))) == []

    def altered(**changes: Any) -> dict[str, Any]:
        copy = json.loads(json.dumps(recorded))
        copy.update(changes)
        return copy

    p = recorded["fake_probability"]
    assert compare_response(200, recorded, 200, altered(fake_probability=p + 0.5 * PROBABILITY_TOLERANCE,
                                                        confidence=recorded["confidence"])) == []
    assert any("fake_probability" in problem for problem in
               compare_response(200, recorded, 200, altered(fake_probability=p + 2 * PROBABILITY_TOLERANCE)))
    moved = altered()
    moved["faces"][0]["box"][0] += 1.0
    assert any("box" in problem for problem in compare_response(200, recorded, 200, moved))
    flipped = altered(label="FAKE" if recorded["label"] == "REAL" else "REAL")
    assert any("label" in problem for problem in compare_response(200, recorded, 200, flipped))
    assert compare_response(200, recorded, 503, {"code": 503}) != []
    assert compare_response(200, recorded, 200, altered(model={**recorded["model"], "version": "9"})) != []


# ---------------------------------------------------------------------------------- A/B metrics (unit)


def test_roc_auc_and_percentiles() -> None:
    assert roc_auc([False, False, True, True], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([False, True], [0.2, 0.9]) == 1.0
    assert roc_auc([False, True, False, True], [0.5, 0.5, 0.5, 0.5]) == 0.5  # ties count half
    assert roc_auc([True, True], [0.1, 0.2]) is None
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


# -------------------------------------------------------------------------------- against a live server


@pytest.mark.server
def test_deploy_refuses_an_archive_with_altered_weights(live: TorchServeInstance) -> None:
    before = registered(live)
    result = rollout(live, "deploy", "4.0")
    assert result.returncode == 1
    assert "corrupt or was altered" in result.stderr and "not deployed" in result.stderr
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
        result = run_script("rollout.py", "--run-dir", str(live.run_dir), *args, env=env)
        assert result.returncode == 1 and expected in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
    stopped = run_script("rollout.py", "--run-dir", str(live.run_dir), "--management-url",
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
    golden = read_golden(rollout_store / f"{MODEL_NAME}-1.0.mar")
    assert golden
    boxes = {entry["name"].split(".")[0]: entry["response"]["faces"][0]["box"]
             for entry in golden["requests"] if entry["name"] in ("astronaut.png", "grace_hopper.jpg")}
    data = make_labelled_set(tmp_path / "labelled", {"astronaut": media.astronaut,
                                                     "grace_hopper": media.grace_hopper}, boxes)
    report_file = tmp_path / "compare.json"
    result = run_script("compare_versions.py", str(data), "--a", "1.0", "--b", "2.0",
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
