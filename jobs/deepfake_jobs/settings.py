"""Every setting of the job service, read once from the environment (``DEEPFAKE_JOBS_*``).

The API, the workers and ``make jobs`` read the same variables, so one ``.env`` (or one Kubernetes ConfigMap)
configures them all. Secrets are not settings: Redis's password is in the Redis URL the launcher composes,
the job API's keys in :mod:`keys`' file, TorchServe's in its own key file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from deepfake_detector.archive import DEFAULT_MODEL_NAME
from deepfake_detector.config import PipelineSettings
from deepfake_detector.sampling import MAX_POSITIONS, parse_sampling

REPO = Path(__file__).resolve().parents[2]
PREFIX = "DEEPFAKE_JOBS_"
MiB = 1024 * 1024


@dataclass(frozen=True)
class JobSettings:
    """The job service's configuration; :meth:`from_env` reads ``DEEPFAKE_JOBS_<FIELD>`` for each field."""

    run_dir: Path = REPO / ".run" / "jobs"
    """Uploads, the API's key file, Redis's data and the logs."""
    redis_url: str = field(default="redis://127.0.0.1:6390/0", repr=False)
    """Its password, if any, stays out of the settings' repr (and so out of logs)."""
    torchserve_run_dir: Path = REPO / ".run"
    """Where TorchServe's ``key_file.json`` is (its API key renews the inference and management keys)."""
    inference_url: str = "http://127.0.0.1:8080"
    management_url: str = "http://127.0.0.1:8081"
    model: str = DEFAULT_MODEL_NAME
    """The model name the pieces are scored by. Registering the same archive under a second name with its own
    workers keeps job traffic off the interactive workers (README, Long videos as jobs)."""
    api_host: str = "127.0.0.1"
    api_port: int = 8090
    max_upload_bytes: int = 4096 * MiB
    max_video_seconds: float = 4 * 3600.0
    max_video_frames: int = 1_000_000
    sampling: str = "every_seconds:1"
    """A job's default sampling (a request's ``sampling`` field overrides it)."""
    max_samples: int = 14_400
    """The most frames one job scores (more are thinned evenly, as a request's ``max_frames``)."""
    max_decode_per_sample: int = PipelineSettings.max_decode_per_sample
    """As the server's: a sample whose exact frame costs more moves to a cheap nearby frame (``sampling``)."""
    piece_samples: int = 8
    """Sampled frames per piece: at most the served version's ``max_frames``. Small pieces spread a job evenly over
    TorchServe's workers (Benchmark: 16 per piece with 2 worker processes scored a 10-minute video at 0.61x the
    in-process rate, 8 with 4 at 1.04x)."""
    max_piece_bytes: int = 48 * MiB
    """The packets a piece carries stay within this size (``video``); keep it below TorchServe's
    ``max_request_size`` with room for the container's framing."""
    key_renew_before_s: float = 300.0
    """TorchServe's keys are renewed this long before they expire (``scoring``)."""
    piece_timeout_s: float = 300.0
    piece_retries: int = 8
    """Retries of a piece TorchServe answers 503 or cannot be reached for, with exponential backoff."""
    visibility_timeout_s: int = 3600
    """Redis redelivers a task not acknowledged within this time (a worker that died): above the longest task."""
    stall_s: float = 900.0
    """A running job without progress for this long has its missing pieces sent again (a task lost with its
    worker, which Redis's redelivery did not bring back); scoring one twice counts it once."""
    retention_s: int = 24 * 3600
    """Uploads, records and results are removed this long after a job ends."""
    webhook_allowlist: str = ""
    """Comma-separated URL prefixes a webhook may target (e.g. ``https://hooks.example.com/``); empty: none."""
    webhook_timeout_s: float = 10.0
    workers: int = 4
    """Celery worker processes ``make jobs`` starts: each has one piece at TorchServe at a time, so keep at least
    twice TorchServe's workers, and no TorchServe worker idles while a piece's answer travels back."""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> JobSettings:
        environ = dict(os.environ if environ is None else environ)
        values = {}
        for item in dataclasses.fields(cls):
            raw = environ.get(PREFIX + item.name.upper())
            if raw is None or raw == "":
                continue
            kind = type(item.default)
            values[item.name] = Path(raw) if isinstance(item.default, Path) else kind(raw)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """ValueError naming the first setting that cannot work."""
        parse_sampling(self.sampling)
        for name in ("max_upload_bytes", "max_samples", "piece_samples", "max_piece_bytes", "piece_retries",
                     "visibility_timeout_s", "retention_s", "workers", "max_decode_per_sample"):
            if getattr(self, name) < 1:
                raise ValueError(f"{PREFIX}{name.upper()} must be at least 1, got {getattr(self, name)}")
        if self.piece_samples > MAX_POSITIONS:
            raise ValueError(f"{PREFIX}PIECE_SAMPLES must be at most {MAX_POSITIONS} (one request's at_frames)")

    @property
    def uploads(self) -> Path:
        return self.run_dir / "uploads"

    @property
    def key_file(self) -> Path:
        return self.run_dir / "api_keys.json"

    @property
    def allowed_webhooks(self) -> tuple[str, ...]:
        return tuple(prefix.strip() for prefix in self.webhook_allowlist.split(",") if prefix.strip())

    def planning(self) -> PipelineSettings:
        """The server's limits and sampling rules, with a job's length limits, for planning a whole video."""
        return PipelineSettings(max_frames=self.max_samples, max_decode_per_sample=self.max_decode_per_sample,
                                max_video_seconds=self.max_video_seconds, max_video_frames=self.max_video_frames,
                                max_bytes=self.max_upload_bytes)

    def to_env(self) -> dict[str, str]:
        """The variables that give another process these settings (``make jobs`` passes them on)."""
        return {PREFIX + item.name.upper(): str(getattr(self, item.name)) for item in dataclasses.fields(self)}
