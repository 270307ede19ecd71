"""Memory soak: mixed traffic for minutes, and each worker's resident memory after warm-up and at the end.

    deepfake-soak                        # `make soak`: 12 minutes, 4 clients, the default archive
    deepfake-soak --minutes 3 --clients 2

A private TorchServe (free loopback ports, ``reports/soak/run``) serves ``model_store/deepfake_detector-1.0.mar``
(built if missing) with its own settings: two workers, batches of up to eight. The clients cycle through the
heaviest traffic the load-test media offer: a group photo with eight faces, 480p/1080p/4K face photos and
both videos. Every worker's resident set size (RSS) is sampled every ``--every`` seconds (the series and its
peak, with batches in flight). The two figures that are compared are taken at rest, with no request in
flight: when warm-up ends (``--warm-up`` seconds, once every kind of input has been seen; the clients pause
for the reading) and after the last request; the report gives both, the growth between them, and the whole
series in ``reports/soak/soak-STAMP.json``. A request
that fails is counted and makes the run fail: a soak measures memory on traffic that is served.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import requests
from deepfake_detector.archive import DEFAULT_MODEL_NAME, archive_path

from .build_mar import build_archive
from .load_media import make_load_media
from .loadtest import start_private_server
from .paths import MODEL_STORE, REPORTS
from .torchserve import server_processes

DEFAULT_REPORT_DIR = REPORTS / "soak"


@dataclass
class SoakReport:
    minutes: float
    clients: int
    requests: int
    failures: int
    warm_up_s: float
    warm_rss_mb: dict[str, float]
    end_rss_mb: dict[str, float]
    peak_rss_mb: dict[str, float]
    frontend_rss_mb: float
    samples: list[dict[str, float]] = field(default_factory=list)

    @property
    def growth(self) -> dict[str, float]:
        return {pid: self.end_rss_mb[pid] / self.warm_rss_mb[pid] - 1 for pid in self.end_rss_mb
                if pid in self.warm_rss_mb}

    def lines(self) -> list[str]:
        lines = [f"{self.minutes:g} min, {self.clients} clients: {self.requests} requests, {self.failures} failed"]
        for pid in sorted(self.end_rss_mb):
            growth = 100 * self.growth.get(pid, float("nan"))
            lines.append(f"worker {pid}: RSS at rest {self.warm_rss_mb.get(pid, float('nan')):.0f} MB after "
                         f"warm-up, {self.end_rss_mb[pid]:.0f} MB at the end ({growth:+.1f}%); peak with batches "
                         f"in flight {self.peak_rss_mb[pid]:.0f} MB")
        lines.append(f"frontend (java): RSS {self.frontend_rss_mb:.0f} MB at the end")
        return lines


def workers_rss_mb(server_pid: int) -> tuple[dict[str, float], float]:
    """(RSS in MB of each worker by pid, RSS of the Java frontend) of the server's process tree."""
    roles = server_processes(server_pid)
    workers, frontend = {}, 0.0
    for member in roles["workers"]:
        with contextlib.suppress(psutil.NoSuchProcess):
            workers[str(member.pid)] = member.memory_info().rss / 2**20
    for member in roles["frontend"]:
        with contextlib.suppress(psutil.NoSuchProcess):
            frontend = member.memory_info().rss / 2**20
    return workers, frontend


def run_soak(url: str, token: str, server_pid: int, bodies: list[tuple[str, bytes]], minutes: float, clients: int,
             warm_up_s: float, every_s: float, model: str = DEFAULT_MODEL_NAME) -> SoakReport:
    stop = threading.Event()
    running = threading.Event()
    running.set()
    counts = {"requests": 0, "failures": 0, "in_flight": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def client(offset: int) -> None:
        session = requests.Session()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
        for label, body in itertools.islice(itertools.cycle(bodies), offset, None):
            running.wait()
            if stop.is_set():
                return
            with lock:
                counts["in_flight"] += 1
            try:
                answer = session.post(f"{url}/predictions/{model}", data=body, headers=headers, timeout=300)
                ok = answer.status_code == 200
                detail = f"{label}: HTTP {answer.status_code} {answer.text[:200]}"
            except requests.RequestException as error:
                ok, detail = False, f"{label}: {error}"
            with lock:
                counts["in_flight"] -= 1
                counts["requests"] += 1
                if not ok:
                    counts["failures"] += 1
                    failures.append(detail)
                    if len(failures) == 1:
                        print(f"  first failure: {detail}", flush=True)

    threads = [threading.Thread(target=client, args=(number * 3,), daemon=True) for number in range(clients)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    samples: list[dict[str, float]] = []
    warm: dict[str, float] = {}
    peak: dict[str, float] = {}
    try:
        while (elapsed := time.monotonic() - started) < 60 * minutes:
            time.sleep(every_s)
            rss, frontend = workers_rss_mb(server_pid)
            samples.append({"t_s": round(time.monotonic() - started, 1), "frontend": round(frontend, 1),
                            **{pid: round(value, 1) for pid, value in rss.items()}})
            for pid, value in rss.items():
                peak[pid] = max(peak.get(pid, 0.0), value)
            if not warm and elapsed >= warm_up_s:
                running.clear()
                warm = at_rest(server_pid, counts, lock)
                running.set()
                print("  warm-up over, at rest: " + "  ".join(f"{pid}: {value:.0f} MB"
                                                           for pid, value in sorted(warm.items())), flush=True)
            print(f"  {elapsed:6.0f} s  requests {counts['requests']:5d}  failed {counts['failures']}  "
                  + "  ".join(f"{pid}: {value:.0f} MB" for pid, value in sorted(rss.items())), flush=True)
    finally:
        stop.set()
        running.set()
        for thread in threads:
            thread.join(timeout=300)
    end = at_rest(server_pid, counts, lock)
    _, frontend = workers_rss_mb(server_pid)
    for detail in failures[:5]:
        print(f"  failed: {detail}")
    return SoakReport(minutes, clients, counts["requests"], counts["failures"], warm_up_s, warm, end, peak, frontend,
                      samples)


def at_rest(server_pid: int, counts: dict[str, int], lock: threading.Lock, settle_s: float = 2.0,
            timeout_s: float = 300.0) -> dict[str, float]:
    """Each worker's RSS once no request is in flight (the caller has stopped sending)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with lock:
            if counts["in_flight"] == 0:
                break
        time.sleep(0.2)
    time.sleep(settle_s)
    return workers_rss_mb(server_pid)[0]


def soak_bodies() -> list[tuple[str, bytes]]:
    """The mix: every face photo size, the group photo and both videos, interleaved."""
    media = make_load_media()
    photos = [(f"photo {size}", path.read_bytes()) for size in ("480p", "1080p", "4k")
              for path in media.photos_of_size(size)]
    group = ("group photo (8 faces)", media.group_photo.read_bytes())
    videos = [(f"video {name}", path.read_bytes()) for name, path in media.videos.items()]
    return [*photos[:3], group, videos[0], *photos[3:], group, videos[1]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--warm-up", type=float, default=120.0, metavar="SECONDS")
    parser.add_argument("--every", type=float, default=10.0, metavar="SECONDS", help="RSS sampling period")
    parser.add_argument("--archive", type=Path, default=archive_path(MODEL_STORE, DEFAULT_MODEL_NAME, "1.0"))
    parser.add_argument("--report-dir", type=Path, default=DEFAULT_REPORT_DIR)
    args = parser.parse_args(argv)
    if args.warm_up >= 60 * args.minutes:
        parser.error(f"--warm-up ({args.warm_up:g} s) must end before the run does ({args.minutes:g} min)")

    if not args.archive.exists():
        build_archive("1.0", name=DEFAULT_MODEL_NAME, model_store=args.archive.parent, golden_requests=True)
    bodies = soak_bodies()
    instance = start_private_server(args.report_dir / "run", args.archive)
    try:
        pid = instance.pid()
        assert pid is not None
        print(f"soak: {args.minutes:g} min, {args.clients} clients on {args.archive.name}", flush=True)
        report = run_soak(instance.inference_url, instance.keys()["inference"], pid, bodies, args.minutes,
                          args.clients, args.warm_up, args.every)
    finally:
        instance.stop()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = args.report_dir / f"soak-{stamp}.json"
    target.write_text(json.dumps(asdict(report) | {"growth": report.growth}, indent=2))
    for line in report.lines():
        print(line)
    print(f"report: {target}")
    return 0 if report.failures == 0 and report.requests > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
