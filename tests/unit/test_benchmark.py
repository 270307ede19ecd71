"""The benchmark measures the right thing: its reference and the pipeline find the same faces and agree on
the same crops, and its table renders with round-by-round ratios (speed itself is not asserted)."""

from __future__ import annotations

import statistics

import pytest
from deepfake_detector import build_detector


def test_benchmark_reference_and_pipeline_agree_and_the_table_renders(default_pipeline, load_media):
    from deepfake_ops import benchmark

    reference = benchmark.ReferencePipeline(build_detector(seed=0), default_pipeline.settings)
    quality = benchmark.compare_quality(default_pipeline, reference, load_media)
    assert quality["mismatches"] == [], quality
    assert quality["max_prob_diff"] <= 1e-4, quality
    network = benchmark.bench_network(default_pipeline, reference.model, [2], repeats=1)
    assert network[0]["max_abs_prob_diff"] <= 1e-4 and network[0]["pipeline_img_s"] > 0

    results = benchmark.Results(
        machine={"when": "now", "cpus": 2, "torch_threads": 2, "gpu": None},
        settings={"batchSize": 2, "maxBatchDelay": 50, "workers": 2, "threads_per_worker": 1, "forward": "onnxruntime"},
        network=network, quality=quality,
    )
    # Rounds taken together: 4K costs 1.25, 1.20 and 1.30 times 480p, round by round.
    rounds = {"480p": [100.0, 110.0, 90.0], "1080p": [120.0, 120.0, 120.0], "4k": [125.0, 132.0, 117.0]}
    results.pipeline = {size: _fake_row(taken) for size, taken in rounds.items()}
    # 1080p: 300 requests in 30 s on 2 cores; the workers used 45 core-seconds, the frontend 6, Locust 3.
    cpu = {"wall_s": 30.0, "cpus": 2, "workers_s": 45.0, "frontend_s": 6.0, "load_generator_s": 3.0}
    results.served = {"480p": {"steady_requests_per_s": 9.6, "p50_ms": 500, "p95_ms": 800},
                      "1080p": {"steady_requests_per_s": 10.0, "requests": 300, "p50_ms": 600, "p95_ms": 900,
                                "network_alone_img_s": [19.0, 21.0], "cpu": cpu}}
    results.worker_stages = {"1080p": {"ms_per_image": 99.0, "stages_ms": {"decode": 5.8, "detect": 35.6,
                                                                           "crop": 1.4, "forward": 56.2}}}
    results.long_video = {"10 s": {"ms_per_item": 1000.0, "samples_moved": 0},
                          "10 min": {"ms_per_item": 1200.0, "samples_moved": 29},
                          "ratio": 1.2, "ratio_lowest": 1.1, "ratio_highest": 1.3}
    results.face_search = {"face_photo_480p": {"ratio": 1.05, "lowest": 1.0, "highest": 1.1},
                           "recall_after": {"recall": 1.0, "found": 43, "reference_faces": 43, "images": 36,
                                            "missed": []},
                           "recall_before": {"recall": 0.907, "found": 39, "reference_faces": 43, "images": 36,
                                             "missed": ["group_1080p.jpg"] * 4}}
    results.ratios = benchmark.compute_ratios(results)
    assert results.ratios["served_over_inprocess_480p"] == pytest.approx(0.96)
    assert results.ratios["cost_4k_over_480p"] == pytest.approx(1.25)
    assert results.ratios["served_1080p_over_network_alone"] == pytest.approx(0.5)  # against the mean, 20/s
    assert benchmark.machine_time(cpu) == pytest.approx({"workers": 0.75, "frontend": 0.1, "Locust": 0.05,
                                                         "rest": 0.1})
    table = benchmark.markdown(results, "deepfake-benchmark")
    assert "| 480p |" in table and "served over inprocess 480p | 0.96 | >= 0.95" in table
    assert "| cost 4k over 480p | 1.25 (rounds 1.20-1.30) | <= 1.3 |" in table
    assert "served: 2 workers x 1 threads; forward onnxruntime" in table
    assert "in-process, torch forward /s" in table
    assert "| verdict 10min over 10s | 1.20 (rounds 1.10-1.30) | <= 1.5 |" in table
    assert "| face photo 480p after over before | 1.05 (rounds 1.00-1.10) | <= 1.15 |" in table
    assert "| face recall | 1.00 | >= 0.95 |" in table and "43/43 on 36 photos and frames" in table
    # 150 worker core-ms per request against 100 core-ms per image for the network alone (2 threads, 20/s).
    assert ("| 1080p photos | 10.00 | 20.0 (19.0, 21.0) | 0.50 | 75% / 10% / 5% / 10% | 150 | 100 "
            "| 5.8 / 35.6 / 1.4 / 56.2 |") in table
    assert "224 px face crops" not in table  # not served in this run


def _fake_row(rounds_ms: list[float]) -> dict:
    ms_per_image = statistics.median(rounds_ms)
    timing = {"stages_ms": dict.fromkeys(("decode", "detect", "crop", "forward"), ms_per_image / 4),
              "ms_per_item": ms_per_image, "rounds_ms": rounds_ms, "per_s": 1000 / ms_per_image}
    return {"kind": "image", "pipeline": timing, "reference": timing, "speedup": 1.0}
