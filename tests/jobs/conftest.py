"""Every test in this folder runs the job service's real parts (redis-server, Celery workers, the job API)
in front of a real TorchServe on loopback (Java and redis-server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.jobs)
