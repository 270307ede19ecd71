"""Run the Locust suite headless and report: CSV, HTML, a PNG over time, and one summary line.

    deepfake-loadtest                      # `make loadtest`: MixedUser, 4 users, 60 s
    deepfake-loadtest --users 8 --time 120s --user-class ImageUser --model-version 2.0

If a server started by ``make serve`` is running (``.run/``), it is the target (its token is read from
``.run/key_file.json``). Otherwise a private TorchServe is started on free loopback ports in
``reports/loadtest/run`` with ``model_store/deepfake_detector-1.0.mar`` (built if missing) and stopped at
the end. Locust runs as a subprocess (it monkey-patches sockets; this process keeps plain ``requests``).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from deepfake_detector.archive import DEFAULT_MODEL_NAME, archive_path

from .build_mar import build_archive
from .load_media import DEFAULT_MEDIA_DIR, make_load_media
from .paths import MODEL_STORE, REPO, REPORTS, RUN_DIR
from .torchserve import TorchServeInstance, free_port

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

    def line(self) -> str:
        return (f"requests/s {self.steady_requests_per_s:.2f} (whole run {self.requests_per_s:.2f}), "
                f"p50 {self.p50_ms:.0f} ms, p95 {self.p95_ms:.0f} ms, p99 {self.p99_ms:.0f} ms, "
                f"failures {self.failures}/{self.requests}")

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def run_locust(
    host: str, token: str, csv_prefix: Path, user_class: str = "MixedUser", users: int = 4, run_time: str = "60s",
    html: Path | None = None, extra_env: dict[str, str] | None = None, warmup_s: float = 5.0,
) -> LocustSummary:
    """One headless Locust run as a subprocess; returns its summary (raises if Locust itself failed)."""
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).parent / "locust"), "-f", str(LOCUSTFILE), "--headless",
               "-u", str(users), "-r", str(users), "-t", run_time, "--host", host,
               "--csv", str(csv_prefix), "--csv-full-history", "--only-summary", "--loglevel", "WARNING",
               "--stop-timeout", "120", user_class]
    if html is not None:
        command[1:1] = ["--html", str(html)]
    env = dict(os.environ) | {"DFD_TOKEN": token} | (extra_env or {})
    # Made here, before Locust starts, so that writing them does not eat into the measured run.
    make_load_media(Path(env.get("DFD_MEDIA_DIR", str(DEFAULT_MEDIA_DIR))))
    finished = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    stats = Path(f"{csv_prefix}_stats.csv")
    if not stats.exists():
        raise RuntimeError(f"locust wrote no {stats} (exit {finished.returncode}):\n{finished.stderr[-3000:]}")
    return summarize(csv_prefix, warmup_s)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--user-class", default="MixedUser", choices=["ImageUser", "VideoUser", "MixedUser"])
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--time", default="60s", help="Locust run time (e.g. 60s, 2m)")
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--model-version", default="", help="target this version (default: the default version)")
    parser.add_argument("--archive", type=Path, default=archive_path(MODEL_STORE, DEFAULT_MODEL_NAME, "1.0"),
                        help="archive for the private server when no `make serve` server is running")
    parser.add_argument("--report-dir", type=Path, default=DEFAULT_REPORT_DIR)
    args = parser.parse_args(argv)

    args.report_dir.mkdir(parents=True, exist_ok=True)
    shared = TorchServeInstance(run_dir=RUN_DIR)
    instance, private = (shared, False) if shared.pid() is not None else (None, True)
    if private:
        if not args.archive.exists():
            build_archive("1.0", name=args.model, model_store=args.archive.parent, golden_requests=True)
        print(f"no `make serve` server running: starting a private one with {args.archive.name}", flush=True)
        instance = start_private_server(args.report_dir / "run", args.archive)
    assert instance is not None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    prefix = args.report_dir / f"{args.user_class}-{stamp}"
    env = {"DFD_MODEL": args.model, "DFD_MODEL_VERSION": args.model_version}
    try:
        media = make_load_media()
        warm_up(instance, args.model, args.model_version or None, media.photos_of_size("480p")[0].read_bytes())
        summary = run_locust(instance.inference_url, instance.keys()["inference"], prefix, args.user_class,
                             args.users, args.time, html=Path(f"{prefix}.html"), extra_env=env)
        plot = plot_history(prefix, Path(f"{prefix}.png"))
    finally:
        if private:
            instance.stop()
    print(f"reports: {prefix}_stats.csv, {prefix}_stats_history.csv, {prefix}.html, {plot}")
    print(f"{args.user_class} x{args.users} for {args.time}: {summary.line()}")
    return 0 if summary.failures == 0 and summary.requests > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
