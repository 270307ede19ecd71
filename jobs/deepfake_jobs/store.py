"""Job records in Redis: one hash per job, its pieces' answers, and state changes made atomically.

Every change that must happen once is one Lua script, so two workers (a task redelivered after its worker
died, or a cancel racing the last piece) can never count a piece twice, finish a job twice or revive a
cancelled one. A piece's answer is stored once per piece number (``HSETNX``): a retried piece overwrites
nothing and is not counted again. Finished jobs expire after the retention time.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal, get_args

import redis

State = Literal["queued", "running", "done", "failed", "cancelled"]
STATES: tuple[str, ...] = get_args(State)
ACTIVE: tuple[State, ...] = ("queued", "running")
ENDED: tuple[State, ...] = ("done", "failed", "cancelled")
PREFIX = "deepfake:job:"
GAUGES = "deepfake:jobs:active"
"""Jobs now queued and running, by state."""
TOTALS = "deepfake:jobs:ended_total"
"""Jobs that ended, by state, since the Redis data began."""
RUNNING = "deepfake:jobs:running"
"""The ids of the jobs now running (``stalled`` looks there)."""
STATS = "deepfake:jobs:stats"
"""Sums over done jobs: seconds from start to end, and frames scored."""

_TRANSITION = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
for i = 4, #ARGV do
  if state == ARGV[i] then
    redis.call('HSET', KEYS[1], 'state', ARGV[1], ARGV[1] .. '_at', ARGV[2], 'progress_at', ARGV[2])
    if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
    if ARGV[1] == 'running' then
      redis.call('SADD', KEYS[4], redis.call('HGET', KEYS[1], 'id'))
    else
      redis.call('SREM', KEYS[4], redis.call('HGET', KEYS[1], 'id'))
    end
    redis.call('HINCRBY', KEYS[2], state, -1)
    if ARGV[1] == 'queued' or ARGV[1] == 'running' then
      redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
    else
      redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
    end
    return state
  end
end
return false
"""

_PIECE_DONE = """
if redis.call('HGET', KEYS[2], 'state') ~= 'running' then return -1 end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HSET', KEYS[2], 'progress_at', ARGV[4])
  redis.call('HINCRBY', KEYS[2], 'pieces_done', 1)
  redis.call('HINCRBY', KEYS[2], 'samples_done', ARGV[3])
end
return tonumber(redis.call('HGET', KEYS[2], 'pieces_done'))
"""

_FINISH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'done_at', ARGV[1], 'result', ARGV[2])
redis.call('SREM', KEYS[5], redis.call('HGET', KEYS[1], 'id'))
redis.call('HINCRBY', KEYS[2], 'running', -1)
redis.call('HINCRBY', KEYS[3], 'done', 1)
redis.call('HINCRBYFLOAT', KEYS[4], 'seconds', ARGV[3])
redis.call('HINCRBY', KEYS[4], 'frames', ARGV[4])
return 1
"""

JSON_FIELDS = ("plan", "media", "error", "result")


@dataclass
class Job:
    """A job's record as stored (JSON fields decoded)."""

    fields: dict[str, Any]

    @property
    def id(self) -> str:
        return self.fields["id"]

    @property
    def state(self) -> State:
        return self.fields["state"]

    @property
    def owner(self) -> str:
        return self.fields["owner"]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def number(self, name: str) -> int:
        return int(self.fields.get(name) or 0)


class JobStore:
    """The jobs in one Redis database."""

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)
        self._transition = self.redis.register_script(_TRANSITION)
        self._piece_done = self.redis.register_script(_PIECE_DONE)
        self._finish = self.redis.register_script(_FINISH)

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def create(self, job_id: str, owner: str, **fields: Any) -> Job:
        record = {"id": job_id, "owner": owner, "state": "queued", "queued_at": _now(), "pieces_done": 0,
                  "samples_done": 0, **fields}
        with self.redis.pipeline() as pipe:
            pipe.hset(_key(job_id), mapping=_encode(record))
            pipe.hincrby(GAUGES, "queued", 1)
            pipe.execute()
        return Job(record)

    def get(self, job_id: str) -> Job | None:
        raw = self.redis.hgetall(_key(job_id))
        return Job(_decode(raw)) if raw else None

    def update(self, job_id: str, **fields: Any) -> None:
        self.redis.hset(_key(job_id), mapping=_encode(fields))

    def attempt(self, job_id: str, what: str) -> int:
        """Count one more delivery of ``what`` (a job's plan, one of its pieces); returns the count."""
        return int(self.redis.hincrby(_key(job_id), f"attempts:{what}", 1))

    def transition(self, job_id: str, to: State, from_states: tuple[State, ...], error: dict | None = None
                   ) -> State | None:
        """Move the job to ``to`` if it is in one of ``from_states``; the state it left, or None."""
        left = self._transition(keys=[_key(job_id), GAUGES, TOTALS, RUNNING],
                                args=[to, _now(), json.dumps(error) if error else "", *from_states])
        return left or None

    def piece_done(self, job_id: str, number: int, answer: dict[str, Any], samples: int) -> int | None:
        """Store one piece's answer (once); the number of pieces done, or None when the job is not running."""
        done = self._piece_done(keys=[_pieces_key(job_id), _key(job_id)],
                                args=[number, json.dumps(answer), samples, _now()])
        return None if done < 0 else int(done)

    def get_with_pieces(self, job_id: str) -> tuple[Job | None, dict[int, dict[str, Any]]]:
        """The record and its pieces' answers, read together (MULTI)."""
        with self.redis.pipeline() as pipe:
            raw, pieces = pipe.hgetall(_key(job_id)).hgetall(_pieces_key(job_id)).execute()
        return (Job(_decode(raw)) if raw else None), {int(n): json.loads(v) for n, v in pieces.items()}

    def has_piece(self, job_id: str, number: int) -> bool:
        return bool(self.redis.hexists(_pieces_key(job_id), number))

    def pieces(self, job_id: str) -> dict[int, dict[str, Any]]:
        return {int(n): json.loads(v) for n, v in self.redis.hgetall(_pieces_key(job_id)).items()}

    def finish(self, job_id: str, result: dict[str, Any], seconds: float, frames: int) -> bool:
        """Store the result and mark the job done, once; False if it is no longer running."""
        return bool(self._finish(keys=[_key(job_id), GAUGES, TOTALS, STATS, RUNNING],
                                 args=[_now(), json.dumps(result), seconds, frames]))

    def stalled(self, after_s: float, now: float | None = None) -> list[str]:
        """Running jobs whose pieces were all sent and that made no progress for ``after_s``, each claimed for
        ``after_s`` (``SET NX``), so that one of several API replicas sends its missing pieces again."""
        now = time.time() if now is None else now
        found = []
        for job_id in self.redis.smembers(RUNNING):
            job = self.get(job_id)
            if job is None or job.state != "running" or not job.get("plan"):
                continue
            if now - float(job.get("progress_at") or now) > after_s and self.redis.set(
                    _key(job_id) + ":revived", 1, nx=True, ex=max(1, int(after_s))):
                found.append(job_id)
        return found

    def expire(self, job_id: str, seconds: int) -> None:
        with self.redis.pipeline() as pipe:
            pipe.expire(_key(job_id), seconds)
            pipe.expire(_pieces_key(job_id), seconds)
            pipe.execute()

    def counts(self) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
        """(active jobs by state, ended jobs by state, sums over done jobs)."""
        active = {state: int(self.redis.hget(GAUGES, state) or 0) for state in ACTIVE}
        ended = {state: int(self.redis.hget(TOTALS, state) or 0) for state in ENDED}
        stats = {name: float(value) for name, value in self.redis.hgetall(STATS).items()}
        return active, ended, stats


def _key(job_id: str) -> str:
    return PREFIX + job_id


def _pieces_key(job_id: str) -> str:
    return PREFIX + job_id + ":pieces"


def _now() -> str:
    return f"{time.time():.3f}"


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    return {name: json.dumps(value) if name in JSON_FIELDS else str(value) for name, value in fields.items()
            if value is not None}


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    return {name: json.loads(value) if name in JSON_FIELDS else value for name, value in raw.items()}
