"""``make jobs``: Redis, the Celery workers and the job API beside the TorchServe ``make serve`` started.

    deepfake-jobs start     # Redis on 127.0.0.1:6390 (password, append-only file), workers, API on :8090
    deepfake-jobs stop      # stops all three and waits until no process is left
    deepfake-jobs status

Each part runs as its own process group from the run folder (``.run/jobs``): ``redis/`` holds Redis's
config, password file and append-only file, ``logs/`` the three logs, ``*.pid`` the groups' leaders. With
``DEEPFAKE_JOBS_REDIS_URL`` set in the environment (a managed Redis), no Redis is started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests

from .settings import PREFIX, JobSettings

REDIS_PORT = 6390


@dataclass
class ManagedProcess:
    """One long-running command as a process group with a pid file and a log, stopped with its children."""

    name: str
    command: list[str]
    run_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    _log_offset: int = 0

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.run_dir / "logs" / f"{self.name}.log"

    def start(self) -> None:
        if self.pid() is not None:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid()}); stop it first")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as output:
            process = subprocess.Popen(self.command, cwd=self.run_dir, env={**os.environ, **self.env},
                                       stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid_file.write_text(str(process.pid))

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return None
        return pid

    def stop(self, timeout_s: float = 60.0, sig: int = signal.SIGTERM) -> None:
        """Signal the whole group, wait for it to exit, SIGKILL what is left after ``timeout_s``."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + timeout_s
            while self.pid() is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.pid() is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                while self.pid() is not None:
                    time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)

    def wait_for_log(self, text: str, timeout_s: float) -> None:
        """Until ``text`` appears in what this start logged (the log is appended to across starts)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise RuntimeError(f"{self.name} exited; see {self.log}")
            with open(self.log, "rb") as handle:
                handle.seek(self._log_offset)
                if text.encode() in handle.read():
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s; see {self.log}")


def redis_server(run_dir: Path, port: int) -> tuple[ManagedProcess, str]:
    """Redis on loopback with a password (made once, kept in a mode-600 file) and an append-only file that
    is synced on every write, so queued and finished jobs survive a restart; returns it and its URL."""
    if shutil.which("redis-server") is None:
        raise RuntimeError("the job service needs redis-server: apt-get install -y redis-server (make install)")
    folder = run_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    password_file = folder / "password"
    if not password_file.exists():
        descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(24))
    password = password_file.read_text().strip()
    config = folder / "redis.conf"
    descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write("\n".join([
            "bind 127.0.0.1", f"port {port}", "protected-mode yes", f"requirepass {password}", "daemonize no",
            f"dir {folder}", "appendonly yes", "appendfsync always", 'save ""', "loglevel notice", ""]))
    process = ManagedProcess("redis", ["redis-server", str(config)], run_dir)
    return process, f"redis://:{password}@127.0.0.1:{port}/0"


def wait_for_redis(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    client = redis.Redis.from_url(url)
    while True:
        try:
            if client.ping():
                return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis did not answer within {timeout_s:.0f} s") from None
        time.sleep(0.1)


def celery_worker(settings: JobSettings, env: dict[str, str], name: str = "worker") -> ManagedProcess:
    command = [sys.executable, "-m", "celery", "-A", "deepfake_jobs.tasks", "worker", "--loglevel", "INFO",
               "--concurrency", str(settings.workers), "-E", "-Q", "deepfake_jobs", "-n", f"{name}-%i@%h",
               "--without-gossip", "--without-mingle"]
    return ManagedProcess(name, command, settings.run_dir, env)


def job_api(settings: JobSettings, env: dict[str, str]) -> ManagedProcess:
    command = [sys.executable, "-m", "uvicorn", "deepfake_jobs.api:app", "--host", settings.api_host,
               "--port", str(settings.api_port), "--log-level", "info"]
    return ManagedProcess("api", command, settings.run_dir, env)


def wait_for_api(url: str, timeout_s: float = 60.0, process: ManagedProcess | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.pid() is None:
            raise RuntimeError(f"the job API exited; see {process.log}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the job API at {url} did not answer within {timeout_s:.0f} s")


@dataclass
class LocalJobService:
    """Redis (None: a managed one at ``redis_url``), a Celery worker and the job API for one set of settings, as
    processes of this machine: what ``make jobs``, the tests, the load test and the benchmark start."""

    settings: JobSettings
    redis: ManagedProcess | None
    redis_url: str
    worker: ManagedProcess
    api: ManagedProcess

    @classmethod
    def of(cls, settings: JobSettings, redis_port: int = REDIS_PORT, prepare: bool = True) -> LocalJobService:
        """The parts for ``settings``; with ``DEEPFAKE_JOBS_REDIS_URL`` in the environment, no Redis of our own.
        ``prepare=False`` (stop, status) writes nothing and needs no redis-server installed."""
        managed = os.environ.get(PREFIX + "REDIS_URL")
        if managed:
            server, url = None, managed
        elif prepare:
            server, url = redis_server(settings.run_dir, redis_port)
        else:
            server, url = ManagedProcess("redis", [], settings.run_dir), settings.redis_url
        env = {**settings.to_env(), PREFIX + "REDIS_URL": url}
        return cls(settings, server, url, celery_worker(settings, env), job_api(settings, env))

    @property
    def env(self) -> dict[str, str]:
        """The environment the API and the workers run with (their settings and Redis's URL)."""
        return self.api.env

    @property
    def url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    @property
    def processes(self) -> list[ManagedProcess]:
        """In the order they stop: the API, the worker, Redis."""
        return [self.api, self.worker, *([self.redis] if self.redis else [])]

    def start_redis(self) -> None:
        if self.redis is not None and self.redis.pid() is None:
            self.redis.start()
        wait_for_redis(self.redis_url)

    def start_worker(self) -> None:
        if self.worker.pid() is None:
            self.worker.start()
            self.worker.wait_for_log("ready.", 120)

    def start(self) -> None:
        """Whatever of the three is not running, each waited for; RuntimeError with the log to read."""
        self.start_redis()
        self.start_worker()
        if self.api.pid() is None:
            self.api.start()
        wait_for_api(self.url, process=self.api)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "status"])
    args = parser.parse_args(argv)
    settings = JobSettings.from_env()
    if args.command != "start" and not settings.run_dir.is_dir():
        print(f"no job service running from {settings.run_dir}")
        return 0 if args.command == "stop" else 1
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    service = LocalJobService.of(settings, prepare=args.command == "start")
    if args.command == "stop":
        running = [p.name for p in service.processes if p.pid() is not None]
        service.stop()
        print(f"stopped {', '.join(running)}" if running else f"no job service running from {settings.run_dir}")
        return 0
    if args.command == "status":
        for process in service.processes:
            print(f"{process.name}: {'running, pid ' + str(process.pid()) if process.pid() else 'stopped'}")
        return 0 if all(p.pid() for p in service.processes) else 1
    api_url = service.url
    try:
        service.start()
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    key = f"$({Path(sys.executable)} -m deepfake_jobs.keys show default)"
    print(f"The job service is up: API {api_url}, {settings.workers} worker process(es), Redis from "
          f"{settings.run_dir / 'redis'}. Keys: {settings.key_file}.\n")
    print("Score a long video as a job:\n")
    print(f'  KEY={key}')
    print(f'  curl -s -H "Authorization: Bearer $KEY" -H "Content-Type: application/octet-stream" '
          f"--data-binary @video.mp4 {api_url}/jobs")
    print(f'  curl -s -H "Authorization: Bearer $KEY" {api_url}/jobs/<id>\n')
    print("or: python scripts/score.py video.mp4 photo.jpg    (stop with: make stop)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
