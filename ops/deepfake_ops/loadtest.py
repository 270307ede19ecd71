"""Run the Locust suite headless and report: CSV, HTML, a PNG over time, and one summary line.

    deepfake-loadtest                      # `make loadtest`: MixedUser, 4 users, 60 s
    deepfake-loadtest --users 8 --time 120s --user-class ImageUser --model-version 2.0
    deepfake-loadtest --with-jobs          # `make loadtest-jobs`: photos alone, then beside long-video jobs

If a server started by ``make serve`` is running (``.run/``), it is the target (its token is read from
``.run/key_file.json``); a fleet's (``make serve REPLICAS=N``, ``.run/fleet``) is targeted through its
gateway, with a gateway key made for the run and revoked after it. Otherwise a private TorchServe is
started on free loopback ports in ``reports/loadtest/run`` with ``model_store/deepfake_detector-1.0.mar``
(built if missing) and stopped at the end. Locust runs as a subprocess (it monkey-patches sockets; this
process keeps plain ``requests``).

``--with-jobs`` asks what long videos scored as jobs cost the photos served beside them: ImageUser alone
(``--users``, ``--time``), then the same ImageUsers with ``--job-users`` JobUsers submitting a long 720p video
(``--job-seconds``, made once into ``reports/media``) for the same time, in one Locust process each. It
prints the photos' p95 of both phases and jobs finished per minute, and writes them as JSON beside the CSVs.
The job service is ``make jobs``'s when it runs beside ``make serve``'s server; otherwise a private one
(Redis, a Celery worker, the job API on free ports, in ``reports/loadtest/jobs-run``) in front of the server
used, stopped at the end.

``--fleet-vs-direct N`` asks what the gateway costs: the same Locust run (``--user-class``, ``--users``,
``--time``) on one private TorchServe directly, then on private fleets of 1 and N replicas behind the gateway,
one after the other on this machine, in ``--rounds`` rounds; it prints each run and the median over the rounds
of each fleet's throughput ratio to that round's direct run, and writes them as JSON beside the CSVs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from deepfake_detector.archive import DEFAULT_MODEL_NAME, Archive, archive_path
from deepfake_jobs.client import job_key
from deepfake_jobs.service import LocalJobService, ManagedProcess, wait_for_api
from deepfake_jobs.settings import JobSettings

from . import fleet
from .build_mar import build_archive
from .gateway import Gateway
from .gateway_keys import GatewayKeys
from .load_media import DEFAULT_MEDIA_DIR, PHOTO_HEIGHTS, long_video, make_load_media
from .paths import MODEL_STORE, REPO, REPORTS, RUN_DIR
from .ports import free_port
from .replicas import FLEET_DIR, FleetLayout
from .torchserve import TorchServeInstance

LOCUSTFILE = REPO / "loadtests" / "locustfile.py"
DEFAULT_REPORT_DIR = REPORTS / "loadtest"
PERCENTILES = ("50%", "95%", "99%")


@dataclass
class LocustSummary:
    """The run's figures: steady-state throughput (after warm-up) and whole-run latency percentiles."""

    requests: int
    failures: int
    requests_per_s: float
    steady_requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    csv_prefix: str
    load_generator_cpu_s: float | None = None
    """CPU seconds (user + system) Locust itself used over the run (on one machine, taken from the server);
    None when read from CSV files alone."""

    def line(self) -> str:
        return (f"requests/s {self.steady_requests_per_s:.2f} (whole run {self.requests_per_s:.2f}), "
                f"p50 {self.p50_ms:.0f} ms, p95 {self.p95_ms:.0f} ms, p99 {self.p99_ms:.0f} ms, "
                f"failures {self.failures}/{self.requests}")

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def run_locust(
    host: str, token: str, csv_prefix: Path, user_class: str | Sequence[str] = "MixedUser", users: int = 4,
    run_time: str = "60s", html: Path | None = None, extra_env: dict[str, str] | None = None, warmup_s: float = 5.0,
) -> LocustSummary:
    """One headless Locust run as a subprocess; returns its summary (raises if Locust itself failed).

    ``user_class``: one class or several run side by side (``users`` counts them all)."""
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    classes = [user_class] if isinstance(user_class, str) else list(user_class)
    command = [str(Path(sys.executable).parent / "locust"), "-f", str(LOCUSTFILE), "--headless",
               "-u", str(users), "-r", str(users), "-t", run_time, "--host", host,
               "--csv", str(csv_prefix), "--csv-full-history", "--only-summary", "--loglevel", "WARNING",
               "--stop-timeout", "120", *classes]
    if html is not None:
        command[1:1] = ["--html", str(html)]
    env = dict(os.environ) | {"DFD_TOKEN": token} | (extra_env or {})
    # Made here, before Locust starts, so that writing them does not eat into the measured run.
    make_load_media(Path(env.get("DFD_MEDIA_DIR", str(DEFAULT_MEDIA_DIR))))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    finished = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = Path(f"{csv_prefix}_stats.csv")
    if not stats.exists():
        raise RuntimeError(f"locust wrote no {stats} (exit {finished.returncode}):\n{finished.stderr[-3000:]}")
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return replace(summarize(csv_prefix, warmup_s), load_generator_cpu_s=cpu_s)


def summarize(csv_prefix: Path, warmup_s: float = 5.0) -> LocustSummary:
    """Figures from Locust's CSV files: the Aggregated row, and throughput after ``warmup_s`` from the history."""
    with open(f"{csv_prefix}_stats.csv", newline="") as handle:
        total = next(row for row in csv.DictReader(handle) if row["Name"] == "Aggregated")
    requests = int(total["Request Count"])
    steady = float(total["Requests/s"])
    history = _aggregated_history(csv_prefix)
    if len(history) >= 2:
        start_time = history[0][0] + warmup_s
        window = [row for row in history if row[0] >= start_time] or history
        first, last = window[0], history[-1]
        if last[0] > first[0] and last[1] > first[1]:
            steady = (last[1] - first[1]) / (last[0] - first[0])
    return LocustSummary(
        requests=requests, failures=int(total["Failure Count"]), requests_per_s=float(total["Requests/s"]),
        steady_requests_per_s=steady, p50_ms=_number(total["50%"]), p95_ms=_number(total["95%"]),
        p99_ms=_number(total["99%"]), csv_prefix=str(csv_prefix),
    )


def _aggregated_history(csv_prefix: Path) -> list[tuple[float, int]]:
    """(timestamp, cumulative requests) of the Aggregated rows of the stats history."""
    path = Path(f"{csv_prefix}_stats_history.csv")
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [(float(row["Timestamp"]), int(row["Total Request Count"]))
                for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def plot_history(csv_prefix: Path, target: Path) -> Path:
    """PNG of throughput and latency percentiles over time, from the Aggregated history rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(f"{csv_prefix}_stats_history.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
    if not rows:
        raise RuntimeError(f"{csv_prefix}_stats_history.csv has no Aggregated rows")
    start = float(rows[0]["Timestamp"])
    seconds = [float(row["Timestamp"]) - start for row in rows]
    figure, (throughput, latency) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    throughput.plot(seconds, [_number(r["Requests/s"]) for r in rows], label="requests/s")
    throughput.plot(seconds, [_number(r["Failures/s"]) for r in rows], label="failures/s", color="tab:red")
    throughput.set_ylabel("per second")
    throughput.legend(loc="upper left")
    throughput.grid(alpha=0.3)
    for percentile in PERCENTILES:
        latency.plot(seconds, [_number(r[percentile]) for r in rows], label=f"p{percentile.rstrip('%')}")
    latency.set_ylabel("latency (ms)")
    latency.set_xlabel("seconds since start")
    latency.legend(loc="upper left")
    latency.grid(alpha=0.3)
    figure.suptitle(f"Locust: {Path(csv_prefix).name}")
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    plt.close(figure)
    return target


def start_private_server(run_dir: Path, archive: Path, extra_properties: dict[str, str] | None = None,
                         timeout_s: float = 300.0) -> TorchServeInstance:
    """A TorchServe on free loopback ports serving ``archive``, in ``run_dir``; the caller stops it."""
    instance = TorchServeInstance(run_dir=run_dir, model_store=archive.parent, inference_port=free_port(),
                                  management_port=free_port(), metrics_port=free_port(),
                                  extra_properties=extra_properties or {})
    instance.stop()
    instance.start([archive.name])
    try:
        instance.wait_ready(archive.name.rsplit("-", 1)[0], timeout_s)
    except Exception:
        instance.stop()
        raise
    return instance


def warm_up(instance: TorchServeInstance, model: str, version: str | None, body: bytes, count: int = 2) -> None:
    """A few requests before measuring, so that first-call costs are not counted."""
    client = instance.client(timeout_s=300)
    for _ in range(count):
        answer = client.predict(model, version, body)
        if answer.status != 200:
            raise RuntimeError(f"warm-up request answered HTTP {answer.status}: {answer.body}")


# ---------------------------------------------------------------- photos beside long-video jobs

JOB_SAMPLING = "every_seconds:5"
JOB_VIDEO_SECONDS = 180.0
P95_RATIO_TARGET = 1.5


@dataclass
class JobService:
    """A job API the JobUsers submit to: ``make jobs``'s (``local`` None: never stopped here), or a private one
    this run started and stops."""

    url: str
    key: str
    local: LocalJobService | None = None

    def stop(self) -> None:
        if self.local is not None:
            self.local.stop()


def shared_job_service() -> JobService | None:
    """``make jobs``'s service (``DEEPFAKE_JOBS_*`` settings, its default key) when its parts run, else None."""
    settings = JobSettings.from_env()
    if not settings.key_file.exists():  # never started here: no Redis folder to write for nothing
        return None
    local = LocalJobService.of(settings)
    if any(process.pid() is None for process in local.processes):
        return None
    wait_for_api(local.url, timeout_s=10, process=local.api)
    return JobService(local.url, job_key(settings.key_file))


def start_private_jobs(run_dir: Path, instance: TorchServeInstance, model: str = DEFAULT_MODEL_NAME,
                       **overrides: Any) -> JobService:
    """Redis, a Celery worker and the job API on free loopback ports in ``run_dir``, in front of ``instance``,
    as ``make jobs`` starts them; ``overrides`` are JobSettings fields. The caller stops it."""
    for name in ("api", "worker", "redis"):  # left running by a run that was killed
        ManagedProcess(name, [], run_dir).stop(timeout_s=30)
    shutil.rmtree(run_dir, ignore_errors=True)  # its Redis would still hold that run's queue
    settings = JobSettings(run_dir=run_dir, torchserve_run_dir=instance.run_dir, inference_url=instance.inference_url,
                           management_url=instance.management_url, api_port=free_port(), model=model, **overrides)
    settings.run_dir.mkdir(parents=True)
    local = LocalJobService.of(settings, redis_port=free_port())
    try:
        local.start()
    except Exception:
        local.stop()
        raise
    return JobService(local.url, job_key(settings.key_file), local)


def register_second_name(instance: TorchServeInstance, archive: str, name: str) -> None:
    """The same archive under another model name with its own worker: its requests queue and run apart."""
    instance.client(timeout_s=600).management(
        "POST", "/models", f"register {archive} as {name}",
        params={"url": archive, "model_name": name, "initial_workers": 1, "synchronous": "true"})


def run_seconds(run_time: str) -> float:
    """Locust's run time ("90", "30s", "2m", "1h30m") in seconds."""
    if run_time.isdigit():
        return float(run_time)
    units, total, number = {"h": 3600, "m": 60, "s": 1}, 0.0, ""
    for character in run_time:
        if character.isdigit():
            number += character
        elif character in units and number:
            total, number = total + int(number) * units[character], ""
        else:
            raise ValueError(f"not a Locust run time: {run_time!r}")
    if number:
        raise ValueError(f"not a Locust run time: {run_time!r}")
    return total


def stats_rows(csv_prefix: Path) -> dict[str, dict[str, str]]:
    """The rows of Locust's stats CSV by name (one per request name, and Aggregated)."""
    with open(f"{csv_prefix}_stats.csv", newline="") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


@dataclass
class PhaseSummary:
    """One phase: its photos (one image row) and, beside them, its jobs (the ``job done`` and ``job poll`` rows)."""

    phase: str
    image_users: int
    job_users: int
    run_s: float
    photo_requests: int
    photo_failures: int
    photos_per_s: float
    photo_p50_ms: float
    photo_p95_ms: float
    photo_p99_ms: float
    jobs_done: int
    jobs_failed: int
    jobs_per_minute: float
    job_p50_s: float
    job_polls: int
    job_poll_failures: int
    csv_prefix: str

    def line(self) -> str:
        users = f"ImageUser x{self.image_users}" + (f" + JobUser x{self.job_users}" if self.job_users else "")
        line = (f"{self.phase}: {users} for {self.run_s:.0f} s: photos {self.photos_per_s:.2f}/s, "
                f"p50 {self.photo_p50_ms:.0f} ms, p95 {self.photo_p95_ms:.0f} ms, p99 {self.photo_p99_ms:.0f} ms, "
                f"failures {self.photo_failures}/{self.photo_requests}")
        if self.job_users:
            line += (f"; jobs done {self.jobs_done} ({self.jobs_per_minute:.2f}/min, p50 submit to done "
                     f"{self.job_p50_s:.1f} s), failed {self.jobs_failed}, poll failures "
                     f"{self.job_poll_failures}/{self.job_polls}")
        return line


def summarize_phase(csv_prefix: Path, phase: str, image_users: int, job_users: int, run_s: float) -> PhaseSummary:
    """The phase's figures from its stats CSV: the photos from their row alone, not the Aggregated one, which
    mixes in the jobs' polls."""
    rows = stats_rows(csv_prefix)
    # Percentiles of several rows cannot be combined (no mean of p95s is a p95), so the photos are sent at one
    # size (DFD_IMAGE_SIZES): their one row's percentiles are Locust's own, over every photo request.
    images = [row for name, row in rows.items() if name.startswith("image ")]
    if len(images) != 1:
        raise RuntimeError(f"{csv_prefix}_stats.csv has {len(images)} image rows, not one: send one image size")
    photos = images[0]
    done, polls = rows.get("job done"), rows.get("job poll")
    count = int(done["Request Count"]) if done else 0
    failed = int(done["Failure Count"]) if done else 0
    return PhaseSummary(
        phase=phase, image_users=image_users, job_users=job_users, run_s=run_s,
        photo_requests=int(photos["Request Count"]), photo_failures=int(photos["Failure Count"]),
        photos_per_s=float(photos["Requests/s"]), photo_p50_ms=_number(photos["50%"]),
        photo_p95_ms=_number(photos["95%"]), photo_p99_ms=_number(photos["99%"]),
        # Finished means a valid verdict: the failed ones (failed, cancelled, invalid) are counted apart.
        jobs_done=count - failed, jobs_failed=failed, jobs_per_minute=(count - failed) * 60.0 / run_s,
        job_p50_s=_number(done["50%"]) / 1000 if done else float("nan"),
        job_polls=int(polls["Request Count"]) if polls else 0,
        job_poll_failures=int(polls["Failure Count"]) if polls else 0, csv_prefix=str(csv_prefix),
    )


@dataclass
class JobsComparison:
    """The photos alone and beside the jobs, and what the jobs were."""

    alone: PhaseSummary
    with_jobs: PhaseSummary
    video: str
    sampling: str

    @property
    def p95_ratio(self) -> float:
        return self.with_jobs.photo_p95_ms / self.alone.photo_p95_ms if self.alone.photo_p95_ms > 0 else float("nan")

    def line(self) -> str:
        return (f"photos p95 alone {self.alone.photo_p95_ms:.0f} ms, with jobs {self.with_jobs.photo_p95_ms:.0f} ms "
                f"(ratio Y/X = {self.p95_ratio:.2f}; target <= {P95_RATIO_TARGET}), jobs finished per minute "
                f"{self.with_jobs.jobs_per_minute:.2f}")

    def passed(self) -> bool:
        """Every photo and job answered well in both phases (the ratio is reported, not enforced)."""
        return (all(p.photo_requests > 0 and p.photo_failures == 0 for p in (self.alone, self.with_jobs))
                and self.with_jobs.jobs_done > 0 and self.with_jobs.jobs_failed == 0)

    def as_dict(self) -> dict[str, Any]:
        return {"alone": asdict(self.alone), "with_jobs": asdict(self.with_jobs), "video": self.video,
                "sampling": self.sampling, "photos_p95_ratio": self.p95_ratio, "p95_ratio_target": P95_RATIO_TARGET,
                "jobs_per_minute": self.with_jobs.jobs_per_minute}


def run_with_jobs(
    instance: TorchServeInstance, jobs: JobService, video: Path, prefix: Path, users: int = 4, job_users: int = 1,
    run_time: str = "60s", image_size: str = "480p", sampling: str = JOB_SAMPLING, poll_s: float = 1.0,
    extra_env: dict[str, str] | None = None, html: bool = True,
) -> JobsComparison:
    """ImageUser alone, then the same ImageUsers beside ``job_users`` JobUsers, each for ``run_time``; prints a
    line per phase. ``prefix``-alone and ``prefix``-with-jobs are the two runs' CSV (and HTML) prefixes."""
    if image_size not in PHOTO_HEIGHTS:
        raise ValueError(f"image_size must be one of {', '.join(PHOTO_HEIGHTS)}, got {image_size!r}")
    token, seconds = instance.keys()["inference"], run_seconds(run_time)
    env = (extra_env or {}) | {"DFD_IMAGE_SIZES": image_size}
    job_env = env | {"DFD_JOBS_URL": jobs.url, "DFD_JOBS_KEY": jobs.key, "DFD_JOB_VIDEO": str(video),
                     "DFD_JOB_SAMPLING": sampling, "DFD_JOB_POLL_S": str(poll_s), "DFD_JOB_USERS": str(job_users)}
    phases = []
    for phase, classes, env_of_phase, jobs_of_phase in (("alone", ["ImageUser"], env, 0),
                                                         ("with jobs", ["ImageUser", "JobUser"], job_env, job_users)):
        phase_prefix = Path(f"{prefix}-{phase.replace(' ', '-')}")
        run_locust(instance.inference_url, token, phase_prefix, classes, users + jobs_of_phase, run_time,
                   html=Path(f"{phase_prefix}.html") if html else None, extra_env=env_of_phase)
        phases.append(summarize_phase(phase_prefix, phase, users, jobs_of_phase, seconds))
        print(phases[-1].line(), flush=True)
    return JobsComparison(phases[0], phases[1], str(video), sampling)


@contextlib.contextmanager
def gateway_key(layout: FleetLayout, name: str) -> Iterator[str]:
    """A gateway key for one run, with a rate no load test reaches; revoked at the end."""
    keys = GatewayKeys(layout.key_file)
    key = keys.add(name, rate_per_s=100_000, burst=100_000)
    gateway = Gateway(layout.gateway_dir)
    gateway.reload_keys(keys.all())
    try:
        yield key
    finally:
        keys.revoke(name)
        if gateway.pid() is not None:
            gateway.reload_keys(keys.all())


@dataclass
class GatewayCost:
    """Rounds of: one replica direct, then fleets behind the gateway (1 replica: what the gateway itself costs;
    N: what N replicas buy on this machine). Each round's ratios are taken against that round's direct run, so
    that the machine's drift between rounds cancels out."""

    rounds: list[dict[str, LocustSummary]]

    def ratios(self, phase: str) -> list[float]:
        return [run[phase].steady_requests_per_s / max(run["direct"].steady_requests_per_s, 1e-9)
                for run in self.rounds]

    def line(self) -> str:
        lines = []
        for number, run in enumerate(self.rounds, start=1):
            for phase, summary in run.items():
                lines.append(f"round {number}, {phase}: {summary.line()}")
        for phase in list(self.rounds[0])[1:]:
            ratios = sorted(self.ratios(phase))
            lines.append(f"{phase} / direct throughput: median {statistics.median(ratios):.2f}x (rounds "
                         f"{', '.join(f'{r:.2f}' for r in ratios)})")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"rounds": [{phase: s.as_dict() for phase, s in run.items()} for run in self.rounds],
                "ratios": {phase: self.ratios(phase) for phase in list(self.rounds[0])[1:]}}

    @property
    def failures(self) -> int:
        return sum(s.failures for run in self.rounds for s in run.values())


def run_fleet_vs_direct(archive: Path, replicas: int, report_dir: Path, prefix: Path, user_class: str,
                        users: int, run_time: str, extra_env: dict[str, str], rounds: int = 2) -> GatewayCost:
    """``rounds`` times: one private server directly, then private fleets of 1 and ``replicas`` replicas behind
    the gateway, on the same archive, one after the other."""
    model = extra_env.get("DFD_MODEL", DEFAULT_MODEL_NAME)
    body = make_load_media().photos_of_size("480p")[0].read_bytes()
    results: list[dict[str, LocustSummary]] = []
    for number in range(1, rounds + 1):
        run: dict[str, LocustSummary] = {}
        instance = start_private_server(report_dir / "run", archive)
        try:
            warm_up(instance, model, None, body, count=4)
            run["direct"] = run_locust(instance.inference_url, instance.keys()["inference"],
                                       Path(f"{prefix}-{number}-direct"), user_class, users, run_time,
                                       extra_env=extra_env)
        finally:
            instance.stop()
        for count in sorted({1, replicas}):
            layout = FleetLayout.plan(report_dir / f"fleet-run-{count}", count, free_ports=True, model=model,
                                      model_store=archive.parent.resolve(),
                                      start_version=Archive(archive).manifest().version)
            fleet.start(layout)
            try:
                with gateway_key(layout, "loadtest") as key:
                    for spec in layout.replicas:
                        warm_up(layout.instance(spec), model, None, body, count=4)
                    run[f"{count} behind the gateway"] = run_locust(
                        layout.gateway_url, key, Path(f"{prefix}-{number}-gateway-{count}"), user_class, users,
                        run_time, extra_env=extra_env)
            finally:
                fleet.stop(layout)
        results.append(run)
    return GatewayCost(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--user-class", default="MixedUser", choices=["ImageUser", "VideoUser", "MixedUser"])
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--time", default="60s", help="Locust run time (e.g. 60s, 2m); per phase with --with-jobs")
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--model-version", default="", help="target this version (default: the default version)")
    parser.add_argument("--archive", type=Path, default=archive_path(MODEL_STORE, DEFAULT_MODEL_NAME, "1.0"),
                        help="archive for the private server when no `make serve` server is running")
    parser.add_argument("--report-dir", type=Path, default=DEFAULT_REPORT_DIR)
    jobs = parser.add_argument_group("photos beside long-video jobs")
    jobs.add_argument("--with-jobs", action="store_true",
                      help="ImageUser alone, then beside JobUsers (--user-class is then ImageUser)")
    jobs.add_argument("--job-users", type=int, default=1)
    jobs.add_argument("--job-seconds", type=float, default=JOB_VIDEO_SECONDS,
                      help="length of the 720p video the jobs submit (made once into reports/media)")
    jobs.add_argument("--job-sampling", default=JOB_SAMPLING)
    jobs.add_argument("--jobs-model", default="",
                      help="private server: register the archive a second time under this name, with its own "
                           "worker, and score the jobs' pieces there (job traffic isolated from the photos')")
    parser.add_argument("--fleet-vs-direct", type=int, default=0, metavar="N",
                        help="one private server directly, then private fleets of 1 and N replicas behind the gateway")
    parser.add_argument("--rounds", type=int, default=2, help="--fleet-vs-direct: rounds of the three runs")
    jobs.add_argument("--image-size", default="480p", choices=list(PHOTO_HEIGHTS),
                      help="the photos' one size (one row, so that its percentiles are exact)")
    args = parser.parse_args(argv)

    args.report_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    env = {"DFD_MODEL": args.model, "DFD_MODEL_VERSION": args.model_version}
    if args.fleet_vs_direct:
        if not args.archive.exists():
            build_archive("1.0", name=args.model, model_store=args.archive.parent, golden_requests=True)
        prefix = args.report_dir / f"gateway-{args.user_class}-{stamp}"
        cost = run_fleet_vs_direct(args.archive, args.fleet_vs_direct, args.report_dir, prefix, args.user_class,
                                   args.users, args.time, env, args.rounds)
        Path(f"{prefix}.json").write_text(json.dumps(cost.as_dict(), indent=2))
        print(f"reports: {prefix}-ROUND-direct_stats.csv, {prefix}-ROUND-gateway-N_stats.csv, {prefix}.json")
        print(cost.line())
        return 0 if cost.failures == 0 else 1
    running_fleet = FleetLayout.load(FLEET_DIR) if (FLEET_DIR / "fleet.json").exists() else None
    if running_fleet is not None and fleet.keeper_pid(running_fleet) is not None:
        if args.with_jobs:
            print("error: --with-jobs runs beside one server (`make serve`), not a fleet", file=sys.stderr)
            return 1
        prefix = args.report_dir / f"{args.user_class}-gateway-{stamp}"
        with gateway_key(running_fleet, f"loadtest-{stamp}") as key:
            summary = run_locust(running_fleet.gateway_url, key, prefix, args.user_class, args.users, args.time,
                                 html=Path(f"{prefix}.html"), extra_env=env)
        plot = plot_history(prefix, Path(f"{prefix}.png"))
        print(f"reports: {prefix}_stats.csv, {prefix}_stats_history.csv, {prefix}.html, {plot}")
        print(f"{args.user_class} x{args.users} for {args.time} through the gateway: {summary.line()}")
        return 0 if summary.failures == 0 and summary.requests > 0 else 1
    video = long_video(DEFAULT_MEDIA_DIR, args.job_seconds) if args.with_jobs else None  # before any server idles
    shared = TorchServeInstance(run_dir=RUN_DIR)
    instance, private = (shared, False) if shared.pid() is not None else (None, True)
    if private:
        if not args.archive.exists():
            build_archive("1.0", name=args.model, model_store=args.archive.parent, golden_requests=True)
        print(f"no `make serve` server running: starting a private one with {args.archive.name}", flush=True)
        instance = start_private_server(args.report_dir / "run", args.archive)
    assert instance is not None
    service: JobService | None = None
    try:
        media = make_load_media()
        warm_up(instance, args.model, args.model_version or None, media.photos_of_size("480p")[0].read_bytes())
        if args.with_jobs:
            assert video is not None
            service = None if private else shared_job_service()
            if service is None:
                print("no `make jobs` service beside it: starting a private one", flush=True)
                jobs_model = args.jobs_model or args.model
                if args.jobs_model:
                    register_second_name(instance, args.archive.name, args.jobs_model)
                service = start_private_jobs(args.report_dir / "jobs-run", instance, jobs_model)
            prefix = args.report_dir / f"jobs-{stamp}"
            comparison = run_with_jobs(instance, service, video, prefix, args.users, args.job_users, args.time,
                                       args.image_size, args.job_sampling, extra_env=env)
        else:
            prefix = args.report_dir / f"{args.user_class}-{stamp}"
            summary = run_locust(instance.inference_url, instance.keys()["inference"], prefix, args.user_class,
                                 args.users, args.time, html=Path(f"{prefix}.html"), extra_env=env)
            plot = plot_history(prefix, Path(f"{prefix}.png"))
    finally:
        if service is not None:
            service.stop()
        if private:
            instance.stop()
    if args.with_jobs:
        report = Path(f"{prefix}.json")
        report.write_text(json.dumps(comparison.as_dict(), indent=2, default=float))
        print(f"reports: {prefix}-alone_stats.csv, {prefix}-with-jobs_stats.csv (and _stats_history.csv, .html), "
              f"{report}")
        print(comparison.line())
        return 0 if comparison.passed() else 1
    print(f"reports: {prefix}_stats.csv, {prefix}_stats_history.csv, {prefix}.html, {plot}")
    print(f"{args.user_class} x{args.users} for {args.time}: {summary.line()}")
    return 0 if summary.failures == 0 and summary.requests > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
