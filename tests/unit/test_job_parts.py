"""The job service's parts that need no server: webhook signatures and their allow-list, a piece's description,
the key file, and the settings read from the environment."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from deepfake_jobs import webhooks
from deepfake_jobs.keys import KeyRing, ensure_key_file, key_id
from deepfake_jobs.settings import JobSettings
from deepfake_jobs.video import Piece


def test_a_webhook_signature_checks_body_secret_and_age():
    body = b'{"id": "j1", "state": "done"}'
    header = webhooks.sign(body, "s3cret", timestamp=1_000_000)
    assert webhooks.verify(body, header, "s3cret", now=1_000_100)
    assert not webhooks.verify(body + b" ", header, "s3cret", now=1_000_100)
    assert not webhooks.verify(body, header, "other", now=1_000_100)
    assert not webhooks.verify(body, header, "s3cret", now=1_000_000 + webhooks.MAX_AGE_S + 1)  # a replay
    assert not webhooks.verify(body, "v1=00", "s3cret", now=1_000_100)


def test_webhooks_go_only_to_allowed_prefixes():
    allowed = ("https://hooks.example.com/deepfake/",)
    assert webhooks.allowed("https://hooks.example.com/deepfake/done", allowed)
    for url in ("https://hooks.example.com.evil.net/deepfake/", "http://169.254.169.254/latest",
                "https://user:pw@hooks.example.com/deepfake/", "file:///etc/passwd", "https://hooks.example.com/"):
        assert not webhooks.allowed(url, allowed), url
    assert not webhooks.allowed("https://hooks.example.com/deepfake/done", ())  # no allow-list: no webhooks


def test_a_piece_names_its_samples_by_position_within_it():
    piece = Piece(3, [*range(250, 500), *range(1000, 1250)], [250, 375, 1100], [10.0, 15.0, 44.0], 123)
    assert str(piece.sampling()) == "at_frames:0,125,350"
    assert piece.to_json()["ranges"] == [[250, 500], [1000, 1250]]
    assert Piece.from_json(piece.to_json()) == piece


def test_the_key_file_is_private_and_jobs_hold_only_a_hash(tmp_path: Path):
    ring = ensure_key_file(tmp_path / "api_keys.json")
    default = ring.named("default")
    assert default is not None and stat.S_IMODE(os.stat(ring.path).st_mode) == 0o600
    second = ring.add("second")
    assert KeyRing(ring.path).owner(second.key) == second and ring.owner("not-a-key") is None
    assert default.id == key_id(default.key) and default.key not in default.id
    with pytest.raises(ValueError):
        ring.add("second")


def test_settings_come_from_the_environment_and_bad_ones_are_named():
    settings = JobSettings.from_env({"DEEPFAKE_JOBS_PIECE_SAMPLES": "8", "DEEPFAKE_JOBS_RUN_DIR": "/tmp/x",
                                     "DEEPFAKE_JOBS_SAMPLING": "uniform:64"})
    assert (settings.piece_samples, settings.run_dir, settings.sampling) == (8, Path("/tmp/x"), "uniform:64")
    assert JobSettings.from_env(settings.to_env()) == settings
    with pytest.raises(ValueError, match="DEEPFAKE_JOBS_WORKERS"):
        JobSettings.from_env({"DEEPFAKE_JOBS_WORKERS": "0"})
