"""Per-class specialization results: <class_index>.safetensors (tensors) + <class_index>.json.

Tensors are stored in fp32 exactly as computed, so generation from loaded artifacts is
bit-identical to generation from the in-memory ones. The JSON is written last: a class
counts as finished only when both files exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tinyshot.errors import DataError
from tinyshot.utils.io import atomic_write, read_json, write_json

FORMAT_VERSION = 1
TENSOR_KEYS = ("token_embedding", "z_T", "null_embeddings", "support_latents", "timesteps")


@dataclass
class ClassArtifact:
    """What TINT needs per class: v_n, and per support image z_T,k and u_{1..T},k."""

    class_index: int
    class_name: str
    token: str
    prompt_template: str
    token_embedding: torch.Tensor  # (D,)
    z_T: torch.Tensor  # (K, C, h, w)
    null_embeddings: torch.Tensor  # (K, S, 77, D) NTI or (K, 1, 77, D) NPI
    support_latents: torch.Tensor  # (K, C, h, w) encoded support images (DA-Fusion)
    timesteps: torch.Tensor  # (S,) DDIM timesteps the null embeddings belong to
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_support(self) -> int:
        return int(self.z_T.shape[0])

    @property
    def num_inference_steps(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def guidance(self) -> float:
        return float(self.meta.get("guidance", 7.5))

    @property
    def timestep_spacing(self) -> str:
        return str(self.meta.get("timestep_spacing", "trailing"))

    @property
    def prompt(self) -> str:
        return self.prompt_template.format(self.token)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).detach().cpu().contiguous() for k in TENSOR_KEYS}

    def save(self, out_dir: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(out_dir)
        base = out / str(self.class_index)
        atomic_write(base.with_suffix(".safetensors"), lambda p: save_file(self.tensors(), p))
        meta = {
            "format_version": FORMAT_VERSION,
            "class_index": self.class_index,
            "class_name": self.class_name,
            "token": self.token,
            "prompt_template": self.prompt_template,
            "prompt": self.prompt,
            "num_support": self.num_support,
            "shapes": {k: list(v.shape) for k, v in self.tensors().items()},
            **self.meta,
        }
        write_json(base.with_suffix(".json"), meta)
        return base.with_suffix(".safetensors")

    @classmethod
    def load(cls, json_path: str | Path) -> ClassArtifact:
        from safetensors.torch import load_file

        json_path = Path(json_path)
        meta = read_json(json_path)
        st = json_path.with_suffix(".safetensors")
        if not st.is_file():
            raise DataError(f"{st}: artifact tensors missing (specialization unfinished?)")
        try:
            t = load_file(st)
        except Exception as e:
            raise DataError(f"{st}: unreadable safetensors file ({e})") from e
        missing = [k for k in TENSOR_KEYS if k not in t]
        if missing:
            raise DataError(f"{st}: missing tensors {missing}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{json_path}: unsupported artifact format {meta.get('format_version')}"
            )
        rest = {
            k: v
            for k, v in meta.items()
            if k
            not in (
                "format_version",
                "class_index",
                "class_name",
                "token",
                "prompt_template",
                "prompt",
                "num_support",
                "shapes",
            )
        }
        return cls(
            class_index=int(meta["class_index"]),
            class_name=str(meta["class_name"]),
            token=str(meta["token"]),
            prompt_template=str(meta["prompt_template"]),
            meta=rest,
            **{k: t[k] for k in TENSOR_KEYS},
        )


def artifact_done(out_dir: Path, class_index: int) -> bool:
    base = Path(out_dir) / str(class_index)
    return base.with_suffix(".json").is_file() and base.with_suffix(".safetensors").is_file()


def load_artifacts(directory: str | Path) -> list[ClassArtifact]:
    """All classes of a specialization folder, ordered by class index."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: artifact folder not found")
    paths = sorted((p for p in d.glob("*.json") if p.stem.isdigit()), key=lambda p: int(p.stem))
    if not paths:
        raise DataError(f"{d}: no class artifacts (<class>.json + .safetensors); run specialize")
    arts = [ClassArtifact.load(p) for p in paths]
    idx = [a.class_index for a in arts]
    if idx != list(range(len(arts))):
        raise DataError(f"{d}: class artifacts {idx} are not 0..{len(arts) - 1} (unfinished run?)")
    return arts
