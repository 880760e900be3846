"""torchvision ResNet encoders, randomly initialised, with the classifier removed."""

from __future__ import annotations

import torchvision
from torch import nn


def build_backbone(name: str, small_stem: bool, zero_init_residual: bool = True) -> tuple[nn.Module, int]:
    """Return (encoder, feature_dim); encoder maps Nx3xHxW -> NxC (C = feature_dim).

    small_stem: a 3x3 stride-1 first conv and no max-pool, as SimSiam does for 32-px CIFAR images
    (paper, Appendix D); the ImageNet stem would shrink a 32-px input to 1x1 by layer4.
    """
    # zero_init_residual: each residual block starts as identity, as the official SimSiam code builds its ResNet.
    resnet = getattr(torchvision.models, name)(weights=None, zero_init_residual=zero_init_residual)
    if small_stem:
        resnet.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        resnet.maxpool = nn.Identity()
    feature_dim = resnet.fc.in_features
    resnet.fc = nn.Identity()  # forward() ends with avgpool + flatten -> NxC
    return resnet, feature_dim
