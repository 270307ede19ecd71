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
from deepfake_jobs.service import ManagedProcess, celery_worker, job_api, redis_server, wait_for_api, wait_for_redis
from deepfake_jobs.settings import PREFIX, JobSettings
from deepfake_ops.torchserve import TorchServeInstance, free_port


@dataclass
class JobStack:
    """Redis, the worker and the API for one TorchServe; ``url`` is the API's base URL."""

    settings: JobSettings
    redis: ManagedProcess
    redis_url: str
    worker: ManagedProcess
    api: ManagedProcess
    torchserve: TorchServeInstance
    env: dict[str, str]
    """The environment the API and the workers run with (their settings and Redis's URL)."""

    @classmethod
    def start(cls, root: Path, torchserve: TorchServeInstance, **overrides: Any) -> JobStack:
        settings = JobSettings(run_dir=root, torchserve_run_dir=torchserve.run_dir,
                               inference_url=torchserve.inference_url, management_url=torchserve.management_url,
                               api_port=free_port(), **overrides)
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        server, url = redis_server(root, free_port())
        env = {**settings.to_env(), PREFIX + "REDIS_URL": url}
        settings = JobSettings.from_env(env)
        stack = cls(settings, server, url, celery_worker(settings, env), job_api(settings, env), torchserve, env)
        stack.start_redis()
        stack.start_worker()
        stack.api.start()
        wait_for_api(stack.url, process=stack.api)
        return stack

    @property
    def url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def start_redis(self) -> None:
        self.redis.start()
        wait_for_redis(self.redis_url)

    def start_worker(self) -> None:
        self.worker.start()
        self.worker.wait_for_log("ready.", 120)
        # The log is appended to: the next start must wait for its own "ready.".
        self.worker.log.rename(self.worker.log.with_suffix(f".{int(time.time() * 1000)}.log"))

    def kill_worker(self) -> None:
        """SIGKILL the worker's whole process group (the main process and its pool): a machine lost."""
        self.worker.stop(timeout_s=10, sig=signal.SIGKILL)

    def stop(self) -> None:
        for process in (self.api, self.worker, self.redis):
            process.stop(timeout_s=30)

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
