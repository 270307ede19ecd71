"""A GPU worker, through the archive's handler with a multi-request batch (skipped without CUDA).

What a GPU worker must get right the first time: it runs on the GPU TorchServe assigns (``gpu_id``), answers
say ``cuda/fp16`` (backbone under autocast, head in fp32) or ``cuda/fp32``, MTCNN finds the same faces, and
every golden request matches within the tolerance the archive records for that compute, which is what
``deepfake-rollout verify`` holds a GPU version to. No GPU was lent to the sessions that wrote this: these
tests have not run yet; on a machine with CUDA they run with the rest (``make test``).
"""

from __future__ import annotations

import pytest
import torch
from deepfake_detector.archive import Archive, archive_path
from deepfake_ops.archive_handler import ArchiveContext, load_handler_class
from deepfake_ops.golden import Tolerances, answer_compute, compare_response, request_body

from tests.support import MODEL_NAME

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize(("precision", "compute"), [("auto", "cuda/fp16"), ("fp32", "cuda/fp32")])
def test_a_gpu_worker_answers_a_batch_within_its_recorded_golden_tolerance(
    model_store, tmp_path, precision: str, compute: str,
) -> None:
    mar = Archive(archive_path(model_store, MODEL_NAME, "1.0"))
    golden = mar.golden()
    model_dir = mar.extract(tmp_path)
    context = ArchiveContext(model_dir)
    context.system_properties["gpu_id"] = 0
    context.model_yaml_config.setdefault("handler", {})["precision"] = precision
    handler = load_handler_class(model_dir)()
    handler.initialize(context)
    assert handler.pipeline.device.type == "cuda" and next(handler.pipeline.model.parameters()).is_cuda

    entries = golden["requests"]
    responses = handler.handle([{"body": request_body(entry)} for entry in entries], context)
    for index, (entry, response) in enumerate(zip(entries, responses, strict=True)):
        status = context.statuses.get(index, 200)
        if status == 200:
            assert answer_compute(response) == compute
        problems = compare_response(entry["status"], entry["response"], status, response,
                                    Tolerances.recorded(golden, compute))
        assert problems == [], (entry["name"], problems)
