"""A job's webhook: where it may go, and a signature its receiver can check.

The body is JSON; the ``X-Deepfake-Signature`` header is ``t=<unix time>,v1=<hex HMAC-SHA256>`` over
``"<t>.<body>"`` with the webhook secret of the key that made the job (``keys``), so a receiver knows the call
came from this service, for this tenant, recently (check ``t`` against replays). Targets must start with a
prefix of the configured allow-list: a job cannot make the service call an arbitrary host.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

SIGNATURE_HEADER = "X-Deepfake-Signature"
MAX_AGE_S = 300.0


def allowed(url: str, allowlist: tuple[str, ...]) -> bool:
    """An http(s) URL that starts with one of the allowed prefixes."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.username or parts.password:
        return False
    return any(url.startswith(prefix) for prefix in allowlist)


def sign(body: bytes, secret: str, timestamp: float | None = None) -> str:
    stamp = str(int(timestamp if timestamp is not None else time.time()))
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def verify(body: bytes, header: str, secret: str, max_age_s: float = MAX_AGE_S, now: float | None = None) -> bool:
    """What a receiver runs: the signature matches and is at most ``max_age_s`` old."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        stamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - stamp) > max_age_s:
        return False
    return hmac.compare_digest(sign(body, secret, stamp), header)
