"""Every test in this folder runs a fleet on loopback: real TorchServe replicas behind the real gateway
(nginx from Debian's packages, with its njs module), tended by the real keeper process (Java and nginx
needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.fleet)
