"""Health check for the detector's TorchServe: renew expiring keys, ping, and require READY workers.

TorchServe 0.12 guards even ``/ping`` with the inference key, and its inference and management keys
expire after 60 minutes. A probe that only pinged would start failing an hour after start; this one
renews a key that expires within ``--renew-before`` minutes (with the API key, which does not expire:
TorchServe rewrites ``key_file.json``) and pings with the current inference key. ``/ping`` answers
Healthy with no model loaded, so the check then asks the management API for every registered model's
default version and passes only if each has at least one READY worker (``--model`` narrows it to one).
Exit status 0 means healthy. It uses the standard library only, so it runs anywhere; in the image, with
no argument (the key file and ports come from the environment the image sets):

    python /srv/deepfake/bin/healthcheck.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


def expires_within(entry: dict[str, str], minutes: float) -> bool:
    stamp = entry.get("expiration time")
    if not stamp:
        return False
    expiry = dt.datetime.fromisoformat(stamp.rstrip("Z")[:26]).replace(tzinfo=dt.timezone.utc)
    return expiry - dt.datetime.now(dt.timezone.utc) < dt.timedelta(minutes=minutes)


def call(method: str, url: str, key: str, timeout_s: float) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def check(key_file: Path, inference_url: str, management_url: str, renew_before_min: float,
          timeout_s: float, model: str | None = None) -> tuple[bool, str]:
    keys = json.loads(key_file.read_text())
    for kind in ("inference", "management"):
        if expires_within(keys[kind], renew_before_min):
            status, text = call("POST", f"{management_url}/token?type={kind}", keys["API"]["key"], timeout_s)
            if status != 200:
                return False, f"renewing the {kind} key failed: {status} {text[:200]}"
    keys = json.loads(key_file.read_text())
    status, text = call("GET", f"{inference_url}/ping", keys["inference"]["key"], timeout_s)
    if status != 200 or "Healthy" not in text:
        return False, f"ping: {status} {text.strip()[:200]}"
    return models_ready(management_url, keys["management"]["key"], timeout_s, model)


def models_ready(management_url: str, key: str, timeout_s: float, model: str | None) -> tuple[bool, str]:
    """Whether every registered model's (or ``model``'s) default version has a READY worker."""
    if model is None:
        status, text = call("GET", f"{management_url}/models?limit=1000", key, timeout_s)
        if status != 200:
            return False, f"listing models: {status} {text.strip()[:200]}"
        names = [entry["modelName"] for entry in json.loads(text).get("models", [])]
        if not names:
            return False, "no model is registered: nothing can be served"
    else:
        names = [model]
    states = []
    for name in names:
        status, text = call("GET", f"{management_url}/models/{urllib.parse.quote(name, safe='')}", key, timeout_s)
        if status != 200:
            return False, f"model {name}: {status} {text.strip()[:200]}"
        described = json.loads(text)[0]
        workers = [worker.get("status") for worker in described.get("workers", [])]
        ready = workers.count("READY")
        if not ready:
            return False, (f"model {name} version {described.get('modelVersion')}: no READY worker "
                           f"(workers: {workers or 'none'})")
        states.append(f"{name} {described.get('modelVersion')}: {ready}/{len(workers)} READY")
    return True, "; ".join(states)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    app_home = os.environ.get("APP_HOME")
    parser.add_argument("--key-file", type=Path,
                        default=Path(app_home, "var", "run", "key_file.json") if app_home else Path("key_file.json"),
                        help="default: $APP_HOME/var/run/key_file.json in the image, else ./key_file.json")
    parser.add_argument("--inference-url",
                        default=f"http://127.0.0.1:{os.environ.get('DEEPFAKE_INFERENCE_PORT', '8080')}")
    parser.add_argument("--management-url",
                        default=f"http://127.0.0.1:{os.environ.get('DEEPFAKE_MANAGEMENT_PORT', '8081')}")
    parser.add_argument("--model", help="check only this model (default: every registered model)")
    parser.add_argument("--renew-before", type=float, default=15.0, metavar="MINUTES")
    parser.add_argument("--timeout", type=float, default=4.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    try:
        healthy, detail = check(args.key_file, args.inference_url, args.management_url, args.renew_before,
                                args.timeout, args.model)
    except (OSError, ValueError, KeyError, IndexError) as error:
        healthy, detail = False, f"{type(error).__name__}: {error}"
    print(detail)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
