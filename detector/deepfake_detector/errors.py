"""Errors a caller can act on.

A request the detector answers without a verdict gets a :class:`RequestError`, carrying an HTTP status, a
short machine-readable code, a human sentence and whether the same request may succeed if sent again.
Whatever server stands in front of the pipeline turns it into ``{"error", "detail", "retryable"}`` for that
one request; it is never folded into a score. Two kinds exist:

* :class:`InputError`: the request itself cannot be scored (4xx); sending it again gives the same answer.
* :class:`TemporaryError`: this worker cannot score it now, through no fault of the request (503, e.g. the
  video temp area is full); a retry, here later or on another replica, may succeed.
"""

from __future__ import annotations


class RequestError(Exception):
    """A request answered with an error instead of a verdict, with the status the client should receive."""

    retryable = False

    def __init__(self, code: str, detail: str, status: int = 400) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = status

    def to_json(self) -> dict[str, str | bool]:
        return {"error": self.code, "detail": self.detail, "retryable": self.retryable}


class InputError(RequestError):
    """A request the detector cannot score, whatever it retries: its status is 4xx."""


class TemporaryError(RequestError):
    """A request this worker cannot score right now (503): the client should retry with backoff."""

    retryable = True

    def __init__(self, code: str, detail: str, status: int = 503) -> None:
        super().__init__(code, detail, status)


class WeightsMismatchError(ValueError):
    """Weights whose tensors do not fit the architecture they claim to be for."""
