"""An unpacked archive's own handler, run as a TorchServe worker runs it, without the Java frontend.

:class:`ArchiveContext` stands in for the part of TorchServe's worker context the handler uses (as
TorchServe's own handler tests do with a mock context). Golden requests are recorded through
``python -m deepfake_ops.archive_handler`` in a fresh process, so that the code answering is the archive's
own copy of ``deepfake_detector`` and nothing of the builder's process leaks into it; for that reason this
module imports nothing of ``deepfake_detector`` itself.

    echo '{"model_dir": "DIR", "bodies": ["a.png", "b.mp4"]}' | python -m deepfake_ops.archive_handler
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HANDLER_FILE = "torchserve_handler.py"  # deepfake_detector.archive's name for it; not imported here (above)
MAR_MANIFEST_FILE = "MAR-INF/MANIFEST.json"


class ArchiveContext:
    """The part of TorchServe's worker context the handler uses, read from an unpacked archive."""

    def __init__(self, model_dir: Path) -> None:
        self.manifest = json.loads((model_dir / MAR_MANIFEST_FILE).read_text())
        model = self.manifest.get("model", {})
        self.model_name = model.get("modelName")
        config_file = model.get("configFile")
        self.model_yaml_config = yaml.safe_load((model_dir / config_file).read_text()) if config_file else {}
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 1}
        self.metrics = None  # no metrics outside a server
        self.statuses: dict[int, int] = {}
        self.content_types: dict[int, str] = {}
        self.headers: dict[int, dict[str, str]] = {}

    def get_request_id(self, idx: int = 0) -> str | None:
        return None

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = code

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.headers.setdefault(idx, {})[key] = value


def load_handler_class(model_dir: Path, module_name: str = "archive_torchserve_handler") -> type:
    """The handler module's one class (TorchServe requires exactly one)."""
    spec = importlib.util.spec_from_file_location(module_name, Path(model_dir) / HANDLER_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    classes = [member for _, member in inspect.getmembers(module, inspect.isclass)
               if member.__module__ == module_name]
    if len(classes) != 1:
        raise RuntimeError(f"the archive's handler module defines {len(classes)} classes, not one")
    return classes[0]


def answer(model_dir: Path, bodies: list[bytes]) -> list[tuple[int, Any]]:
    """(status, JSON body) for each body, one request per handle() call, by the archive's handler class."""
    model_dir = Path(model_dir).resolve()
    handler = load_handler_class(model_dir)()
    context = ArchiveContext(model_dir)
    handler.initialize(context)
    results = []
    for body in bodies:
        context.statuses.clear()
        (response,) = handler.handle([{"body": body}], context)
        results.append((context.statuses.get(0, 200), json.loads(json.dumps(response))))
    return results


def main() -> int:
    request = json.loads(sys.stdin.read())
    model_dir = Path(request["model_dir"]).resolve()
    results = answer(model_dir, [Path(path).read_bytes() for path in request["bodies"]])
    package = sys.modules.get("deepfake_detector")
    if package is None or not Path(package.__file__).resolve().is_relative_to(model_dir):
        raise SystemExit(f"the handler ran {getattr(package, '__file__', None)}, not the archive's own copy")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
