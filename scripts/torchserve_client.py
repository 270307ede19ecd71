"""Talk to a running TorchServe: find its addresses and tokens, call its APIs, explain its refusals.

The server started by ``scripts/server.py`` (``make serve``) keeps everything in its run folder: the
rendered ``config.properties`` (listen addresses, model store) and TorchServe's ``key_file.json`` (tokens).
Tokens can also come from the environment (``TS_MANAGEMENT_TOKEN``, ``TS_INFERENCE_TOKEN``), which win.
Every non-2xx answer becomes a ``ServerRefusal`` whose message is one line: what failed and what to do.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RUN_DIR = REPO / ".run"
DEFAULT_MODEL_STORE = REPO / "model_store"
TOKEN_ENV = {"management": "TS_MANAGEMENT_TOKEN", "inference": "TS_INFERENCE_TOKEN"}


class ServerRefusal(RuntimeError):
    """TorchServe could not be reached or answered with an error; the message says what to do."""

    def __init__(self, message: str, status: int | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


@dataclass
class Endpoint:
    """Where one TorchServe listens, which model store it serves, and where its tokens are."""

    management_url: str = "http://127.0.0.1:8081"
    inference_url: str = "http://127.0.0.1:8080"
    model_store: Path = DEFAULT_MODEL_STORE
    run_dir: Path = DEFAULT_RUN_DIR

    @property
    def key_file(self) -> Path:
        return self.run_dir / "key_file.json"

    @classmethod
    def from_run_dir(
        cls, run_dir: Path = DEFAULT_RUN_DIR, management_url: str | None = None,
        inference_url: str | None = None, model_store: Path | None = None,
    ) -> Endpoint:
        """Read the addresses and the model store from the run folder's config.properties, if there is one."""
        run_dir = Path(run_dir)
        properties = read_properties(run_dir / "config.properties")
        return cls(
            management_url=(management_url or properties.get("management_address") or cls.management_url)
            .rstrip("/"),
            inference_url=(inference_url or properties.get("inference_address") or cls.inference_url)
            .rstrip("/"),
            model_store=Path(model_store or properties.get("model_store") or DEFAULT_MODEL_STORE),
            run_dir=run_dir,
        )

    def token(self, kind: str) -> str:
        """The ``management`` or ``inference`` token: from the environment, else from the key file."""
        from_env = os.environ.get(TOKEN_ENV[kind])
        if from_env:
            return from_env
        try:
            return json.loads(self.key_file.read_text())[kind]["key"]
        except FileNotFoundError:
            raise ServerRefusal(
                f"no {kind} token: {self.key_file} does not exist (is the server running from "
                f"{self.run_dir}? start it with `make serve`, pass --run-dir, or set {TOKEN_ENV[kind]})"
            ) from None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ServerRefusal(f"{self.key_file} holds no {kind} key; set {TOKEN_ENV[kind]}") from None


def read_properties(path: Path) -> dict[str, str]:
    """key=value lines of a Java properties file (comments and blank lines skipped)."""
    if not path.exists():
        return {}
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.strip()
    return pairs


@dataclass
class Prediction:
    """One answer of ``/predictions``: status, JSON body (or text), and the client-side latency."""

    status: int
    body: Any
    seconds: float


class TorchServeClient:
    """The management and inference calls the rollout tools make, with errors turned into one line."""

    def __init__(self, endpoint: Endpoint, timeout_s: float = 180.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.session = requests.Session()

    def management(
        self, method: str, path: str, action: str, params: dict[str, Any] | None = None,
        hints: dict[int, str] | None = None, timeout_s: float | None = None,
    ) -> Any:
        """Call the management API; ``action`` and ``hints`` (status -> what to do) shape errors."""
        url = self.endpoint.management_url + path
        headers = {"Authorization": f"Bearer {self.endpoint.token('management')}"}
        try:
            answer = self.session.request(method, url, params=params, headers=headers,
                                          timeout=timeout_s or self.timeout_s)
        except requests.ConnectionError:
            raise self._unreachable(self.endpoint.management_url, action) from None
        except requests.Timeout:
            raise ServerRefusal(f"{action}: no answer from {url} within {timeout_s or self.timeout_s:.0f} s; "
                                f"see {self.endpoint.run_dir / 'logs'}") from None
        if answer.status_code >= 300:
            raise self.refusal(answer, action, "management", hints or {})
        return answer.json() if answer.content else None

    def predict(self, model: str, version: str | None, body: bytes) -> Prediction:
        """POST raw bytes to /predictions/MODEL[/VERSION]; HTTP errors are returned, not raised."""
        path = f"/predictions/{model}" + (f"/{version}" if version else "")
        headers = {"Authorization": f"Bearer {self.endpoint.token('inference')}",
                   "Content-Type": "application/octet-stream"}
        started = time.perf_counter()
        try:
            answer = self.session.post(self.endpoint.inference_url + path, data=body, headers=headers,
                                       timeout=self.timeout_s)
        except requests.ConnectionError:
            raise self._unreachable(self.endpoint.inference_url, f"POST {path}") from None
        seconds = time.perf_counter() - started
        try:
            content: Any = answer.json()
        except ValueError:
            content = answer.text
        if _is_token_refusal(answer.status_code, content):
            raise self.refusal(answer, f"POST {path}", "inference", {})
        return Prediction(answer.status_code, content, seconds)

    def refusal(
        self, answer: requests.Response, action: str, kind: str, hints: dict[int, str],
    ) -> ServerRefusal:
        status = answer.status_code
        try:
            detail = answer.json()
        except ValueError:
            detail = {"message": answer.text.strip()}
        message = detail.get("message", "") if isinstance(detail, dict) else str(detail)
        error_type = detail.get("type") if isinstance(detail, dict) else None
        if _is_token_refusal(status, detail):
            what = (f"the server refused the {kind} token (wrong, or expired: tokens last 60 min); use the "
                    f"running server's {self.endpoint.key_file} or set {TOKEN_ENV[kind]}; renew with "
                    f"`curl -X POST -H \"Authorization: Bearer $API_KEY\" "
                    f"{self.endpoint.management_url}/token?type={kind}`")
        elif status in hints:
            what = f"{message} -> {hints[status]}"
        elif status >= 500:
            what = (f"the server failed ({message or 'no detail'}); see "
                    f"{self.endpoint.run_dir / 'logs' / 'model_log.log'} and ts_log.log")
        else:
            what = message or answer.text.strip() or "no detail"
        return ServerRefusal(f"{action}: HTTP {status}: {what}", status, error_type)

    def _unreachable(self, url: str, action: str) -> ServerRefusal:
        return ServerRefusal(f"{action}: no TorchServe answers at {url}; start it with `make serve`, or "
                             "point at the running one with --run-dir / --management-url / --inference-url")


def _is_token_refusal(status: int, detail: Any) -> bool:
    """TorchServe 0.12 answers a missing or wrong token with 400 InvalidKeyException (401 elsewhere)."""
    return status == 401 or (status == 400 and isinstance(detail, dict)
                             and detail.get("type") == "InvalidKeyException")
