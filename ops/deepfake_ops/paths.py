"""Where the operator tools find the repository's parts (an editable install: ``make install``)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "config"
MODEL_STORE = REPO / "model_store"
RUN_DIR = REPO / ".run"
"""The run folder of the server ``make serve`` starts: its config, keys, logs and rollout history."""
REPORTS = REPO / "reports"
HISTORY_FILE = "rollout_history.json"
"""In a run folder: the versions that were the default, in order, and those deployed (deepfake_ops.rollout)."""
