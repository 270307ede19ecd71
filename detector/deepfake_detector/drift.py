"""The share of FAKE verdicts among the last N, to watch for prediction drift.

A detector whose share of FAKE verdicts moves (a new camera, a new generator, an upstream change in
how uploads are compressed) is telling its operators something before anyone files a complaint. The
window counts verdicts, not seconds, so the figure means the same at 1 request a minute and at 100 a
second; N comes from ``DEEPFAKE_DRIFT_WINDOW`` (default 200). Refused requests are not verdicts and do
not enter the window.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Mapping

DEFAULT_WINDOW = 200


def window_size(environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    size = int(environ.get("DEEPFAKE_DRIFT_WINDOW") or DEFAULT_WINDOW)
    if size < 1:
        raise ValueError(f"DEEPFAKE_DRIFT_WINDOW must be at least 1, got {size}")
    return size


class VerdictWindow:
    """The last ``size`` verdicts and the share of them that are FAKE."""

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        self._verdicts: deque[bool] = deque(maxlen=size)
        self._fakes = 0

    def add(self, is_fake: bool) -> None:
        if len(self._verdicts) == self._verdicts.maxlen:
            self._fakes -= self._verdicts[0]
        self._verdicts.append(is_fake)
        self._fakes += is_fake

    @property
    def count(self) -> int:
        return len(self._verdicts)

    @property
    def fake_share(self) -> float:
        """FAKE verdicts / verdicts in the window (0.0 while it is empty)."""
        return self._fakes / len(self._verdicts) if self._verdicts else 0.0
