"""The network: the design's head exactly, self-describing safetensors weights, clear mismatch errors.
"""

from __future__ import annotations

import pytest
import torch
from deepfake_detector import ModelConfig, WeightsMismatchError, build_detector, load_weights, save_weights
from deepfake_detector.architecture import DeepfakeDetector
from deepfake_detector.transforms import center_region, crop_and_resize, crops_to_tensor
from deepfake_detector.weights import CONFIG_METADATA_KEY
from safetensors.torch import save_file
from torch import nn

from tests.support.media import load_rgb


@pytest.fixture(scope="module")
def default_model() -> DeepfakeDetector:
    return build_detector(seed=0).eval()


def test_backbone_is_efficientnet_b4_with_1792_features(default_model):
    assert default_model.config.backbone == "efficientnet_b4"
    assert default_model.num_features == 1792
    with torch.inference_mode():
        features = default_model.forward_features(torch.zeros(1, 3, 224, 224))
    assert features.shape == (1, 1792)


def test_head_is_exactly_the_designs(default_model):
    head = list(default_model.head)
    assert [type(layer) for layer in head] == [nn.Dropout, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout, nn.Linear]
    assert head[0].p == 0.5 and head[4].p == 0.3
    assert (head[1].in_features, head[1].out_features) == (1792, 512)
    assert head[3].num_features == 512
    assert (head[5].in_features, head[5].out_features) == (512, 2)


def test_seeded_default_is_deterministic_and_seed_dependent():
    first, again, other = build_detector(seed=0), build_detector(seed=0), build_detector(seed=1)
    for name, tensor in first.state_dict().items():
        # Parameters are bit-identical; head statistics come from a CPU forward pass (float reductions).
        torch.testing.assert_close(tensor, again.state_dict()[name], rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(first.head[-1].weight, other.head[-1].weight)


def test_seeded_default_outputs_move_with_the_input(default_model, media):
    """An untrained model that scored every photo alike would make parity checks meaningless."""
    crops = []
    for path in (media.astronaut, media.grace_hopper, media.cat):
        rgb = load_rgb(path)
        crops.append(crop_and_resize(rgb, center_region(rgb.shape[1], rgb.shape[0]), 224))
    images = crops_to_tensor(crops, default_model.config.mean, default_model.config.std)
    with torch.inference_mode():
        probabilities = default_model.fake_probability(default_model(images))
    assert probabilities.std() > 0.01, probabilities


def test_weights_round_trip_with_their_config(tmp_path, default_model):
    path = tmp_path / "w.safetensors"
    sha = save_weights(default_model, path)
    assert len(sha) == 64
    assert path.read_bytes()[8:9] == b"{"  # safetensors: an 8-byte header length, then JSON; no pickle
    loaded = load_weights(path).eval()
    assert loaded.config == default_model.config
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(images), default_model(images))


def test_loading_never_calls_pickle(tmp_path, default_model, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_weights(default_model, path)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load (pickle) must not be used")

    monkeypatch.setattr(torch, "load", refuse)
    load_weights(path)


def test_mismatched_weights_fail_naming_the_keys(tmp_path, default_model):
    tensors = {k: v.clone() for k, v in default_model.state_dict().items()}
    del tensors["head.1.bias"]
    tensors["head.5.weight"] = torch.zeros(3, 512)
    tensors["head.9.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={CONFIG_METADATA_KEY: default_model.config.to_json()})
    with pytest.raises(WeightsMismatchError) as raised:
        load_weights(path)
    message = str(raised.value)
    assert "missing: head.1.bias" in message
    assert "unexpected: head.9.weight" in message
    assert "head.5.weight (file (3, 512), model (2, 512))" in message


def test_weights_without_a_config_are_refused_with_the_fix(tmp_path, default_model):
    path = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in default_model.state_dict().items()}, str(path))
    with pytest.raises(WeightsMismatchError, match="save_weights"):
        load_weights(path)


def test_class_order_travels_with_the_weights():
    logits = torch.tensor([[2.0, 0.0]])
    fake_first = DeepfakeDetector(ModelConfig(backbone="efficientnet_b0", class_names=("FAKE", "REAL")))
    real_first = DeepfakeDetector(ModelConfig(backbone="efficientnet_b0"))
    assert fake_first.config.fake_index == 0 and real_first.config.fake_index == 1
    assert fake_first.fake_probability(logits).item() > 0.85
    assert real_first.fake_probability(logits).item() < 0.15


def test_model_config_refuses_unknown_keys_and_bad_classes():
    with pytest.raises(ValueError, match="unknown key"):
        ModelConfig.from_json('{"input_sise": 224}')
    with pytest.raises(ValueError, match="REAL and FAKE"):
        ModelConfig(class_names=("REAL", "SYNTHETIC"))
