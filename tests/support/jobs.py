"""The job service's real parts for tests: Redis, Celery worker processes and the job API, on free loopback
ports, beside a real TorchServe; each can be stopped, killed and started again mid-test."""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import requests
from deepfake_jobs.keys import ApiKey, KeyRing, ensure_key_file
from deepfake_jobs.service import LocalJobService
from deepfake_jobs.settings import JobSettings
from deepfake_ops.ports import free_port
from deepfake_ops.torchserve import TorchServeInstance


@dataclass
class JobStack(LocalJobService):
    """The job service for one TorchServe, with what the tests do to it and ask of it."""

    torchserve: TorchServeInstance | None = None

    @classmethod
    def start_for(cls, root: Path, torchserve: TorchServeInstance, **overrides: Any) -> JobStack:
        """Started on free ports in ``root``; ``overrides`` are JobSettings fields."""
        settings = JobSettings(run_dir=root, torchserve_run_dir=torchserve.run_dir,
                               inference_url=torchserve.inference_url, management_url=torchserve.management_url,
                               api_port=free_port(), **overrides)
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        local = LocalJobService.of(settings, redis_port=free_port())
        stack = cls(local.settings, local.redis, local.redis_url, local.worker, local.api, torchserve)
        stack.start()
        return stack

    def kill_worker(self) -> None:
        """SIGKILL the worker's whole process group (the main process and its pool): a machine lost."""
        self.worker.stop(timeout_s=10, sig=signal.SIGKILL)

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def keys(self) -> KeyRing:
        return ensure_key_file(self.settings.key_file)

    def key(self, name: str = "default") -> ApiKey:
        ring = self.keys()
        return ring.named(name) or ring.add(name)

    def headers(self, name: str = "default") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key(name).key}"}

    def submit(self, video: Path, key: str = "default", **params: str) -> requests.Response:
        with open(video, "rb") as body:
            return requests.post(f"{self.url}/jobs", data=body, params=params, timeout=120,
                                 headers={**self.headers(key), "Content-Type": "application/octet-stream"})

    def status(self, job_id: str, key: str = "default") -> dict[str, Any]:
        answer = requests.get(f"{self.url}/jobs/{job_id}", headers=self.headers(key), timeout=30)
        answer.raise_for_status()
        return answer.json()

    def wait(self, job_id: str, timeout_s: float = 300, until: tuple[str, ...] = ("done", "failed", "cancelled")
             ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status(job_id)
            if status["state"] in until:
                return status
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} not {until} after {timeout_s} s: {json.dumps(status)[:2000]}")

    def result(self, job_id: str) -> dict[str, Any]:
        answer = requests.get(f"{self.url}/jobs/{job_id}/result", headers=self.headers(), timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()
