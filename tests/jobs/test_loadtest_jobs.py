"""``deepfake-loadtest --with-jobs`` on real parts, shortened: one photo user alone, then beside one job user
submitting a 40 s 720p video to the job service in front of the same TorchServe, each phase 20 s of Locust.

What it checks is the measurement, not the speed: both phases sent photos with no failure, the photos' figures
come from their own row, jobs ended with a valid verdict and were counted, and a job still running when the
test stopped was cancelled rather than left to load the server.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from deepfake_detector.archive import archive_path
from deepfake_ops.load_media import LoadMedia, source_video, write_long_video
from deepfake_ops.loadtest import JobService, run_with_jobs, stats_rows, warm_up

from tests.support import MODEL_NAME, Media
from tests.support.jobs import JobStack

SECONDS = 40
SAMPLING = "every_seconds:15"


@pytest.fixture(scope="module")
def stack(start_server, model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobStack]:
    torchserve = start_server(model_store, [archive_path(model_store, MODEL_NAME, "1.0").name])
    started = JobStack.start_for(tmp_path_factory.mktemp("jobs"), torchserve, workers=1)
    yield started
    started.stop()


def test_photos_alone_then_beside_jobs_are_measured_from_their_own_rows(
        stack: JobStack, load_media: LoadMedia, tmp_path: Path) -> None:
    video = tmp_path / f"long_720p_{SECONDS}s.mp4"
    write_long_video(source_video(), video, seconds=SECONDS)
    warm_up(stack.torchserve, MODEL_NAME, None, Media.astronaut.read_bytes(), count=1)
    prefix = tmp_path / "jobs"
    comparison = run_with_jobs(
        stack.torchserve, JobService(stack.url, stack.key().key), video, prefix, users=1, job_users=1,
        run_time="20s", sampling=SAMPLING, poll_s=0.5, html=False,
        extra_env={"DFD_MEDIA_DIR": str(load_media.group_photo.parent)})

    alone, beside = comparison.alone, comparison.with_jobs
    for phase in (alone, beside):
        assert phase.photo_requests > 0 and phase.photo_failures == 0, phase
        assert phase.photo_p95_ms >= phase.photo_p50_ms > 0, phase
    alone_rows, beside_rows = stats_rows(Path(alone.csv_prefix)), stats_rows(Path(beside.csv_prefix))
    assert not any(name.startswith("job ") for name in alone_rows), alone_rows.keys()
    assert int(beside_rows["job done"]["Request Count"]) >= 1
    assert beside.jobs_done >= 1 and beside.jobs_failed == 0 and beside.job_poll_failures == 0, beside
    assert beside.job_polls >= beside.jobs_done and beside.job_p50_s > 0, beside
    # The photos' figures are their row's, not the Aggregated row's, which counts the jobs' requests too.
    assert beside.photo_requests == int(beside_rows["image 480p"]["Request Count"])
    assert int(beside_rows["Aggregated"]["Request Count"]) > beside.photo_requests
    assert beside.jobs_per_minute == pytest.approx(beside.jobs_done * 60 / 20)
    assert math.isfinite(comparison.p95_ratio) and comparison.passed()
    summary = json.loads(json.dumps(comparison.as_dict(), default=float))
    assert {"alone", "with_jobs", "photos_p95_ratio", "p95_ratio_target", "jobs_per_minute", "sampling"} <= set(summary)
    assert summary["with_jobs"]["photo_p95_ms"] == beside.photo_p95_ms
    assert re.fullmatch(r"photos p95 alone \d+ ms, with jobs \d+ ms \(ratio Y/X = [\d.]+; target <= 1\.5\), "
                        r"jobs finished per minute [\d.]+", comparison.line())

    # Nothing is left running: a job caught by the end of the test was cancelled, not abandoned.
    metrics = requests.get(f"{stack.url}/metrics", timeout=10).text
    assert 'deepfake_jobs{state="running"} 0' in metrics and 'deepfake_jobs{state="queued"} 0' in metrics, metrics
    done = re.search(r'deepfake_jobs_ended_total\{state="done"\} (\d+)', metrics)
    assert done is not None and int(done.group(1)) >= beside.jobs_done
