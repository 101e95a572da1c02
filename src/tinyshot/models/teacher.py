"""The P>M>F few-shot teacher: a pretrained backbone with a ProtoNet head.

Logits are `scale * cos(f(x), p_c) + bias`, where p_c is the L2-normalised mean of the
L2-normalised support features of class c and `scale`, `bias` are learned during episodic
meta-training. (P>M>F's code averages unnormalised features before normalising, and writes
`scale * (cos + bias)`; a shared additive bias does not change the softmax, so only the
prototype averaging differs, and that by little.) The teacher soft-labels any image once
`set_support` has fixed the N classes of an episode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tinyshot.errors import ConfigError, DataError, ModelError
from tinyshot.models.backbones import FeatureBackbone, build_backbone

# Images per backbone call when the caller gives none. Small batches are faster per image on a
# CPU (EfficientNet-Lite0 at 96 px, one thread on the 2-core dev machine: 13.4 ms at 16,
# 19.7-20.1 ms at 50-64), large ones on a GPU.
CPU_BATCH_SIZE = 16
GPU_BATCH_SIZE = 64


def default_batch_size(device: torch.device) -> int:
    return CPU_BATCH_SIZE if device.type == "cpu" else GPU_BATCH_SIZE


class ProtoNetTeacher(nn.Module):
    def __init__(self, backbone: FeatureBackbone, init_scale: float = 10.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))
        self.bias = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("prototypes", torch.empty(0), persistent=False)

    @property
    def input_size(self) -> int:
        return self.backbone.input_size

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    @property
    def num_classes(self) -> int:
        return int(self.prototypes.shape[0]) if self.prototypes.numel() else 0

    def _device(self) -> torch.device:
        return self.scale.device

    @staticmethod
    def compute_prototypes(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, D) unit vectors: per-class mean of unit-normalised features, renormalised."""
        labels = labels.long().view(-1)
        if labels.numel() != features.shape[0]:
            raise DataError(f"{features.shape[0]} support images but {labels.numel()} labels")
        if labels.numel() == 0:
            raise DataError("empty support set")
        n = int(labels.max()) + 1
        counts = torch.bincount(labels, minlength=n)
        if int(labels.min()) < 0 or bool((counts == 0).any()):
            missing = [i for i in range(n) if int(counts[i]) == 0]
            raise DataError(
                f"support labels must cover 0..{n - 1} with at least one image each; "
                f"classes without images: {missing}"
            )
        f = F.normalize(features, dim=-1)
        one_hot = F.one_hot(labels, n).to(f.dtype)  # (S, N)
        means = one_hot.t() @ f / counts.to(f.dtype).unsqueeze(1)
        return F.normalize(means, dim=-1)

    def cosine_logits(self, features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return self.scale * (F.normalize(features, dim=-1) @ prototypes.t()) + self.bias

    @torch.no_grad()
    def set_support(
        self, images: torch.Tensor, labels: torch.Tensor, batch_size: int | None = None
    ) -> ProtoNetTeacher:
        """Fix the episode's classes: prototypes from support images (B,3,H,W) in [0,1]."""
        was_training = self.training
        self.eval()
        feats = self._features_batched(images, batch_size)
        self.prototypes = self.compute_prototypes(feats, labels.to(feats.device))
        self.train(was_training)
        return self

    def _features_batched(self, images: torch.Tensor, batch_size: int | None) -> torch.Tensor:
        dev = self._device()
        batch_size = batch_size or default_batch_size(dev)
        out = [
            self.backbone(images[i : i + batch_size].to(dev))
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, self.feature_dim, device=dev)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.prototypes.numel():
            raise ModelError("teacher has no support set: call set_support(images, labels) first")
        return self.cosine_logits(self.backbone(images), self.prototypes)

    @torch.no_grad()
    def predict_proba(
        self, images: torch.Tensor, temperature: float = 1.0, batch_size: int | None = None
    ) -> torch.Tensor:
        """Soft labels (B, N) for pseudo-labelling; batched, eval mode, on the teacher's device."""
        if not self.prototypes.numel():
            raise ModelError("teacher has no support set: call set_support(images, labels) first")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        was_training = self.training
        self.eval()
        probs = []
        batch_size = batch_size or default_batch_size(self._device())
        for i in range(0, len(images), batch_size):
            logits = self(images[i : i + batch_size].to(self._device()))
            probs.append(torch.softmax(logits.float() / temperature, dim=-1).cpu())
        self.train(was_training)
        if not probs:
            return torch.empty(0, self.num_classes)
        return torch.cat(probs)

    def logits_episode(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        """Differentiable query logits for one episode (one backbone pass over support + query)."""
        feats = self.backbone(torch.cat([support, query]))
        fs, fq = feats[: len(support)], feats[len(support) :]
        return self.cosine_logits(fq, self.compute_prototypes(fs, support_labels))

    def meta(self, **extra: Any) -> dict[str, Any]:
        return {
            "kind": "teacher",
            "arch": f"protonet:{self.backbone.arch_id}",
            **self.backbone.describe(),
            **extra,
        }


def build_teacher(
    backbone_name_or_path: str | None = "efficientnet-lite0",
    checkpoint: str | Path | None = None,
    init_scale: float = 10.0,
    **kw: Any,
) -> ProtoNetTeacher:
    """A teacher on a named backbone; `checkpoint` restores meta-trained weights (checked arch).

    With a checkpoint and backbone_name_or_path=None, the backbone and input size recorded in
    the checkpoint are used.
    """
    state = None
    if checkpoint is not None:
        from tinyshot.utils.checkpoint import load_checkpoint

        state = load_checkpoint(checkpoint)
        meta = state["meta"]
        if meta.get("kind") != "teacher":
            raise ModelError(f"{checkpoint}: not a teacher checkpoint (kind={meta.get('kind')!r})")
        if backbone_name_or_path is None:
            backbone_name_or_path = meta["backbone"]
        kw.setdefault("input_size", meta.get("input_size"))
    if backbone_name_or_path is None:
        raise ConfigError("build_teacher: give a backbone name or a checkpoint")
    teacher = ProtoNetTeacher(build_backbone(backbone_name_or_path, **kw), init_scale=init_scale)
    if state is not None:
        want = teacher.meta()["arch"]
        if state["meta"].get("arch") != want:
            raise ModelError(
                f"{checkpoint}: checkpoint is for {state['meta'].get('arch')!r}, "
                f"but the backbone {backbone_name_or_path!r} is {want!r}"
            )
        try:
            teacher.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ModelError(f"{checkpoint}: weights do not fit {want} ({e})") from e
    return teacher
