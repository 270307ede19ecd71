"""The job service's metrics in Prometheus' text format, beside TorchServe's (``GET /metrics`` of the job API).

Read from Redis at scrape time, so every API replica reports the same numbers: jobs queued and running, jobs
ended by state, the queue's length, and over done jobs their durations and the frames they scored (frames per
second is ``rate(frames) / rate(seconds)``, or the gauge computed over all done jobs).
"""

from __future__ import annotations

from .store import JobStore


def render(store: JobStore, queue: str) -> str:
    active, ended, stats = store.counts()
    seconds, frames = stats.get("seconds", 0.0), stats.get("frames", 0.0)
    lines = ["# HELP deepfake_jobs Jobs now queued or running.", "# TYPE deepfake_jobs gauge"]
    lines += [f'deepfake_jobs{{state="{state}"}} {count}' for state, count in active.items()]
    lines += ["# HELP deepfake_jobs_ended_total Jobs that ended, by how.", "# TYPE deepfake_jobs_ended_total counter"]
    lines += [f'deepfake_jobs_ended_total{{state="{state}"}} {count}' for state, count in ended.items()]
    lines += ["# HELP deepfake_jobs_queue_length Tasks waiting in the Celery queue.",
              "# TYPE deepfake_jobs_queue_length gauge", f"deepfake_jobs_queue_length {store.redis.llen(queue)}",
              "# HELP deepfake_jobs_duration_seconds Time from a job's start to its end (done jobs).",
              "# TYPE deepfake_jobs_duration_seconds summary",
              f"deepfake_jobs_duration_seconds_sum {seconds:.3f}",
              f"deepfake_jobs_duration_seconds_count {ended['done']}",
              "# HELP deepfake_jobs_frames_scored_total Sampled frames scored by done jobs.",
              "# TYPE deepfake_jobs_frames_scored_total counter", f"deepfake_jobs_frames_scored_total {frames:.0f}",
              "# HELP deepfake_jobs_frames_per_second Frames scored per second of job time, over done jobs.",
              "# TYPE deepfake_jobs_frames_per_second gauge",
              f"deepfake_jobs_frames_per_second {frames / seconds if seconds > 0 else 0.0:.3f}"]
    return "\n".join(lines) + "\n"
