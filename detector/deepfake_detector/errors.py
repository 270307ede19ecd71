"""Errors a caller can act on.

Every failure caused by the input becomes an :class:`InputError` carrying an HTTP status, a short
machine-readable code and a human sentence. Whatever server stands in front of the pipeline turns it
into ``{"error": code, "detail": sentence}`` for that one request; it is never folded into a score.
"""

from __future__ import annotations


class InputError(Exception):
    """A request the detector cannot score, with the status the client should receive."""

    def __init__(self, code: str, detail: str, status: int = 400) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = status

    def to_json(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


class WeightsMismatchError(ValueError):
    """Weights whose tensors do not fit the architecture they claim to be for."""
