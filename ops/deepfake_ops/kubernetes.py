"""The fleet's desired state in a cluster: one ConfigMap key (``deepfake-fleet-state``/``rollout_history.json``,
``deploy/deepfake-fleet.yaml``), read and written from inside a pod, with ``requests`` and no client library.

The pod's service account authenticates (its token, re-read on every call: the kubelet rotates it) and its CA
certificate checks the API server's; the manifest's Role allows get/update/patch on that one ConfigMap only.
A write is a JSON merge PATCH of that one key; given the ``resourceVersion`` the text was read at, the API
refuses it (409) when someone changed the ConfigMap meanwhile. Every failure is one line: what failed and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
API_URL = "https://kubernetes.default.svc"
FLEET_STATE_CONFIGMAP = "deepfake-fleet-state"
FLEET_STATE_KEY = "rollout_history.json"


class KubernetesError(RuntimeError):
    """The API could not be reached, refused the call, or holds no such ConfigMap or key."""


@dataclass(frozen=True)
class ApiAccess:
    """Where the API is and how to authenticate; :meth:`in_cluster` for a pod's own service account."""

    url: str = API_URL
    token: str = ""
    verify: str | bool = True
    """The CA bundle that signs the API server's certificate (True: the system's)."""
    timeout_s: float = 10.0

    @classmethod
    def in_cluster(cls, folder: Path = SERVICE_ACCOUNT_DIR, url: str = API_URL) -> ApiAccess:
        try:
            token = (Path(folder) / "token").read_text().strip()
        except FileNotFoundError:
            raise KubernetesError(f"no service-account token at {Path(folder) / 'token'}: run in a pod whose "
                                  "service account may read the ConfigMap (serviceAccountName: deepfake-rollout)") \
                from None
        ca = Path(folder) / "ca.crt"
        return cls(url.rstrip("/"), token, str(ca) if ca.exists() else True)


def current_namespace(folder: Path = SERVICE_ACCOUNT_DIR) -> str:
    """The pod's own namespace, as its service account's files say."""
    try:
        return (Path(folder) / "namespace").read_text().strip()
    except FileNotFoundError:
        raise KubernetesError(f"no namespace file at {Path(folder) / 'namespace'}: not running in a pod; "
                              "pass the namespace") from None


def _call(api: ApiAccess, method: str, namespace: str, name: str, action: str,
          body: dict[str, Any] | None = None) -> dict[str, Any]:
    url = f"{api.url}/api/v1/namespaces/{quote(namespace, safe='')}/configmaps/{quote(name, safe='')}"
    headers = {"Authorization": f"Bearer {api.token}", "Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/merge-patch+json"
    try:
        answer = requests.request(method, url, headers=headers, data=None if body is None else json.dumps(body),
                                  verify=api.verify, timeout=api.timeout_s)
    except requests.exceptions.SSLError:
        raise KubernetesError(f"{action}: the API server's certificate at {api.url} does not check against "
                              f"{api.verify}") from None
    except requests.RequestException as error:
        raise KubernetesError(f"{action}: cannot reach the Kubernetes API at {api.url} ({type(error).__name__}): "
                              "run inside the cluster") from None
    if answer.status_code < 300:
        try:
            return answer.json()
        except ValueError:
            raise KubernetesError(f"{action}: the API answered HTTP {answer.status_code} without JSON") from None
    what = f"ConfigMap {namespace}/{name}"
    try:
        message = str(answer.json().get("message", "")).splitlines()[0] if answer.content else ""
    except (ValueError, AttributeError, IndexError):
        message = answer.text.strip().splitlines()[0] if answer.text.strip() else ""
    reasons = {
        401: "the API refused the service-account token (expired or not this cluster's)",
        403: f"the service account may not {method.lower()} {what} (the Role deepfake-fleet-state grants get, "
             "update and patch on it; serviceAccountName: deepfake-rollout)",
        404: f"no {what}: kubectl apply -f deploy/deepfake-fleet.yaml",
        409: f"{what} changed since it was read: read it again and redo the change",
    }
    raise KubernetesError(f"{action}: HTTP {answer.status_code}: "
                          f"{reasons.get(answer.status_code) or message or 'no detail'}")


def read_configmap_entry(namespace: str, name: str, key: str, api: ApiAccess | None = None) -> tuple[str, str]:
    """The key's text and the ConfigMap's ``resourceVersion`` (for :func:`write_configmap_key`)."""
    api = api or ApiAccess.in_cluster()
    action = f"read {key} of ConfigMap {namespace}/{name}"
    found = _call(api, "GET", namespace, name, action)
    data = found.get("data") or {}
    if key not in data:
        raise KubernetesError(f"{action}: it has no key {key} (keys: {', '.join(sorted(data)) or 'none'})")
    return str(data[key]), str(found.get("metadata", {}).get("resourceVersion", ""))


def read_configmap_key(namespace: str, name: str, key: str, api: ApiAccess | None = None) -> str:
    return read_configmap_entry(namespace, name, key, api)[0]


def write_configmap_key(namespace: str, name: str, key: str, text: str, api: ApiAccess | None = None,
                        resource_version: str | None = None) -> str:
    """Set one key (a JSON merge PATCH: the others stay); returns the new ``resourceVersion``. With
    ``resource_version``, refused if the ConfigMap changed since then."""
    api = api or ApiAccess.in_cluster()
    patch: dict[str, Any] = {"data": {key: text}}
    if resource_version:
        patch["metadata"] = {"resourceVersion": resource_version}
    written = _call(api, "PATCH", namespace, name, f"write {key} of ConfigMap {namespace}/{name}", patch)
    return str(written.get("metadata", {}).get("resourceVersion", ""))
