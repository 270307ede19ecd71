"""Score photos and videos: one line per file, each verdict as JSON, each video's timeline as a PNG.

    python scripts/score.py face.jpg clip.mp4 interview.mp4
    python scripts/score.py recordings/*.mp4 --sampling every_seconds:2 --out reports/interviews
    python scripts/score.py talk.mov --jobs-url http://10.0.0.5:8090 --no-plot

Photos and short videos go straight to TorchServe (``make serve``); a video over --max-direct-mb (64) or
--max-direct-seconds (60) goes to the job service (``make jobs``), with a progress bar while it runs, because
TorchServe takes at most 64 MiB and gives up after 120 s. Keys: TorchServe's inference key from
RUN_DIR/key_file.json (TS_INFERENCE_TOKEN wins), the job API's ``default`` key from the job service's key file
(DEEPFAKE_JOBS_KEY wins); each is read only when a file needs it. Every verdict is written to OUT/NAME.json and
every video's timeline to OUT/NAME.png (NAME: the file's name). Exit status 0 when every file got a verdict.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepfake_detector.archive import DEFAULT_MODEL_NAME
from deepfake_detector.errors import InputError
from deepfake_detector.sampling import parse_sampling
from deepfake_detector.verdict import Verdict, VerdictError
from deepfake_jobs.client import (
    DIRECT_MAX_BYTES,
    DIRECT_MAX_SECONDS,
    ClientError,
    DirectClient,
    JobClient,
    Route,
    default_jobs_url,
    job_key,
    route,
)
from deepfake_jobs.settings import JobSettings, MiB
from deepfake_ops.paths import REPORTS, RUN_DIR
from deepfake_ops.torchserve import Endpoint, ServerRefusal
from tqdm import tqdm


@dataclass
class Scorer:
    """Routes each file and sends it; the clients (and so the keys) are made the first time a file needs them."""

    endpoint: Endpoint
    jobs_url: str
    key_file: Path
    model: str = DEFAULT_MODEL_NAME
    sampling: str | None = None
    max_direct_bytes: int = DIRECT_MAX_BYTES
    max_direct_seconds: float = DIRECT_MAX_SECONDS
    _direct: DirectClient | None = field(default=None, repr=False)
    _jobs: JobClient | None = field(default=None, repr=False)

    def direct(self) -> DirectClient:
        if self._direct is None:
            self.endpoint.token("inference")  # no key: say so before the first upload
            self._direct = DirectClient(self.endpoint.inference_url, lambda: self.endpoint.token("inference"),
                                        self.model)
        return self._direct

    def jobs(self) -> JobClient:
        if self._jobs is None:
            self._jobs = JobClient(self.jobs_url, job_key(self.key_file))
        return self._jobs

    def score(self, path: Path) -> tuple[Route, dict[str, Any]]:
        way = route(path, self.max_direct_bytes, self.max_direct_seconds)
        if way == "direct":
            return way, self.direct().score(path, self.sampling)
        return way, self.run_job(path)

    def run_job(self, path: Path) -> dict[str, Any]:
        """Upload the video as a job and wait for its verdict, with the frames scored as a progress bar; Ctrl-C
        cancels the job rather than leaving it to run unseen."""
        client = self.jobs()
        with tqdm(total=path.stat().st_size, desc=f"{path.name}: upload", unit="B", unit_scale=True,
                  leave=False, dynamic_ncols=True) as upload:
            job = client.submit(path, self.sampling, on_upload=upload.update)
        bar = tqdm(desc=f"{path.name}: job {job['id']}", unit="frame", leave=False, dynamic_ncols=True)

        def show(status: dict[str, Any]) -> None:
            progress = status.get("progress") or {}
            total, done = progress.get("frames_total") or 0, progress.get("frames_done") or 0
            if total and bar.total != total:
                bar.total = total
            bar.n = done
            bar.set_postfix_str(f"{status.get('state')}, pieces {progress.get('pieces_done', 0)}/"
                                f"{progress.get('pieces_total', 0)}", refresh=False)
            bar.refresh()

        try:
            return client.wait(job["id"], show)
        except KeyboardInterrupt:
            with contextlib.suppress(ClientError):
                client.cancel(job["id"])
            tqdm.write(f"{path}: job {job['id']} cancelled", file=sys.stderr)
            raise
        finally:
            bar.close()


def summary(verdict: Verdict) -> str:
    """``FAKE 0.93 (video, 600.0 s, 2 tracks, 1 segment 60.0-98.0 s)``: the verdict in one line."""
    head = f"{verdict.label} {verdict.fake_probability:.2f}"
    if verdict.media.type == "image":
        faces = len(verdict.faces)
        return f"{head} (image, {_count(faces, 'face')})" if faces else f"{head} (image, no face: centre crop)"
    duration = verdict.coverage.duration_s if verdict.coverage is not None else 0.0
    segments = verdict.segments
    spans = ", ".join(f"{s.start_s:.1f}-{s.end_s:.1f} s" for s in segments[:3]) + (", ..." if len(segments) > 3
                                                                                   else "")
    return (f"{head} (video, {duration:.1f} s, {_count(len(verdict.tracks), 'track')}, "
            f"{_count(len(segments), 'segment')}{' ' + spans if segments else ''})")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def output_name(path: Path, taken: set[str]) -> str:
    """The file's name, suffixed when an earlier file of this run had the same name (a/clip.mp4, b/clip.mp4)."""
    name, number = path.name, 1
    while name in taken:
        number += 1
        name = f"{path.name}-{number}"
    taken.add(name)
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", type=Path, nargs="+", metavar="FILE")
    parser.add_argument("--out", type=Path, default=REPORTS / "scores", help="folder for NAME.json and NAME.png")
    parser.add_argument("--sampling", type=_sampling, help="a video's frames, e.g. every_seconds:1 or uniform:32 "
                        "(default: the archive's for direct requests, the job service's for jobs)")
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME, help="TorchServe model of the direct requests")
    parser.add_argument("--no-plot", action="store_true", help="no timeline PNGs")
    parser.add_argument("--jobs-url", help="the job API (default: DEEPFAKE_JOBS_API_HOST/PORT, 127.0.0.1:8090)")
    parser.add_argument("--inference-url", help="TorchServe's inference API (default: the run folder's config)")
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR, help="TorchServe's run folder (its key_file.json)")
    parser.add_argument("--max-direct-mb", type=float, default=DIRECT_MAX_BYTES / MiB,
                        help="larger videos go as jobs")
    parser.add_argument("--max-direct-seconds", type=float, default=DIRECT_MAX_SECONDS,
                        help="longer videos go as jobs")
    args = parser.parse_args(argv)

    try:
        settings = JobSettings.from_env()
    except (ValueError, InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    scorer = Scorer(Endpoint.from_run_dir(args.run_dir, inference_url=args.inference_url),
                    args.jobs_url or default_jobs_url(settings), settings.key_file, args.model, args.sampling,
                    int(args.max_direct_mb * MiB), args.max_direct_seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    scored, untrained = 0, set()
    for path in args.files:
        try:
            way, answer = scorer.score(path)
            verdict = Verdict.from_json(answer)
        except KeyboardInterrupt:
            print(f"{path}: interrupted", file=sys.stderr)
            return 130
        except VerdictError as error:
            print(f"{path}: error: the answer is not a valid verdict: {error}")
            continue
        except (ClientError, ServerRefusal, OSError) as error:
            print(f"{path}: error: {error}")
            continue
        name = output_name(path, taken)
        (args.out / f"{name}.json").write_text(json.dumps(answer, indent=2) + "\n")
        if verdict.media.type == "video" and not args.no_plot:
            from deepfake_jobs.plot import plot_timeline  # matplotlib only when a timeline is drawn

            plot_timeline(verdict, args.out / f"{name}.png", title=f"{path.name} ({way})")
        if not verdict.model.trained:
            untrained.add(f"{verdict.model.name} {verdict.model.version}")
        print(f"{path}: {summary(verdict)}")
        scored += 1
    for model in sorted(untrained):
        print(f"note: {model} is the untrained default: its verdicts are placeholders", file=sys.stderr)
    print(f"{scored}/{len(args.files)} scored; verdicts in {args.out}", file=sys.stderr)
    return 0 if scored == len(args.files) else 1


def _sampling(text: str) -> str:
    """--sampling checked with the server's own parser, before any upload."""
    try:
        parse_sampling(text)
    except InputError as error:
        raise argparse.ArgumentTypeError(error.detail) from None
    return text


if __name__ == "__main__":
    sys.exit(main())
