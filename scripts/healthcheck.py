"""Health check for a TorchServe with token authorization on: renew expiring keys, then ping.

TorchServe 0.12 guards even ``/ping`` with the inference key, and its inference and management keys
expire after 60 minutes. A probe that only pinged would start failing an hour after start; this one
renews a key that expires within ``--renew-before`` minutes (with the API key, which does not expire:
TorchServe rewrites ``key_file.json``), then pings with the current inference key. Exit status 0 means
healthy. It uses the standard library only, so it runs in the bare TorchServe image:

    python healthcheck.py --key-file /home/model-server/key_file.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import urllib.error
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
          timeout_s: float) -> tuple[bool, str]:
    keys = json.loads(key_file.read_text())
    for kind in ("inference", "management"):
        if expires_within(keys[kind], renew_before_min):
            status, text = call("POST", f"{management_url}/token?type={kind}", keys["API"]["key"], timeout_s)
            if status != 200:
                return False, f"renewing the {kind} key failed: {status} {text[:200]}"
    keys = json.loads(key_file.read_text())
    status, text = call("GET", f"{inference_url}/ping", keys["inference"]["key"], timeout_s)
    healthy = status == 200 and "Healthy" in text
    return healthy, f"ping: {status} {text.strip()[:200]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key-file", type=Path, default=Path("key_file.json"))
    parser.add_argument("--inference-url", default="http://127.0.0.1:8080")
    parser.add_argument("--management-url", default="http://127.0.0.1:8081")
    parser.add_argument("--renew-before", type=float, default=15.0, metavar="MINUTES")
    parser.add_argument("--timeout", type=float, default=4.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    try:
        healthy, detail = check(args.key_file, args.inference_url, args.management_url, args.renew_before,
                                args.timeout)
    except (OSError, ValueError, KeyError) as error:
        healthy, detail = False, f"{type(error).__name__}: {error}"
    print(detail)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
