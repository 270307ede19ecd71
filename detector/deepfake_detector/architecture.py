"""The detector network: a timm backbone and the design's regularised head.

The backbone's classifier is removed (``num_classes=0`` yields pooled features) and the head is
Dropout 0.5 -> Linear 512 -> ReLU -> BatchNorm1d -> Dropout 0.3 -> Linear 2, its logits ordered as the
ModelConfig's ``class_names``. The temperature the weights were calibrated with turns logits into the
served fake probability.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from .config import ModelConfig


class DeepfakeDetector(nn.Module):
    """Backbone features -> regularised two-layer head -> logits ordered as ``config.class_names``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0)
        self.num_features: int = self.backbone.num_features
        self.head = nn.Sequential(
            nn.Dropout(config.feature_dropout),
            nn.Linear(self.num_features, config.hidden_size),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(config.hidden_size),
            nn.Dropout(config.hidden_dropout),
            nn.Linear(config.hidden_size, len(config.class_names)),
        )

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, shape (N, num_features)."""
        return self.backbone(images)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def fake_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probability of FAKE for each row of logits."""
        probabilities = torch.softmax(logits.float() / self.config.temperature, dim=1)
        return probabilities[:, self.config.fake_index]
