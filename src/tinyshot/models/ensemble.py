"""A teacher backbone made of several backbones and input sizes, features concatenated.

Each member's features go through an optional power transform `sign(f) * |f|^power` (0.5 is
the square-root transform of few-shot practice, which evens out heavy-tailed activations), are
L2-normalised, and are concatenated. The ProtoNet head normalises the concatenation again;
every block has norm 1, so the cosine to a prototype is the mean of the members' cosines (up to
the prototype's renormalisation): each backbone and scale gets an equal vote.

Spec strings (what `build_backbone` and `PipelineConfig.teacher` accept):

    "efficientnet-lite0@96+efficientnet-lite0@224+efficientnet-lite1@240;power=0.5"

members joined by "+", each `name[@input_size]` (without a size: the `input_size` passed to
`build_backbone`, else the member's native size), options after ";". `ENSEMBLES` names
the tuned ones. Under `torch.no_grad` each member's features are read from / written to a
`FeatureCache` (per weights, size and image content) unless the cache is turned off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tinyshot.errors import ConfigError
from tinyshot.models.feature_backbone import FeatureBackbone
from tinyshot.models.feature_cache import FeatureCache, backbone_key, default_feature_cache_root

# The member that stands for the run's base-class pretrained student (`with_student`).
STUDENT_MEMBER = "student"

# Named ensembles, chosen on train-split episodes (docs/models.md): the best of 254 ImageNet
# candidates (90.4% vs 85.6% for Lite0 at 96 px; also `fit`'s default without a base set, the
# best within its budget on colour drawings), a cheaper one at half its cost (89.7%), and
# the pipeline's default: two cheap ImageNet members plus the in-domain pretrained student
# (90.6% vs 87.1% for Lite0 at 96 px on 18 episodes, at 1/7 of the first one's cost).
ENSEMBLES = {
    "effnet-lite-ensemble": "efficientnet-lite0@224+efficientnet-lite1@240;power=0.5",
    "effnet-lite-fast": "efficientnet-lite0@224+efficientnet-lite1@96;power=0.5",
    "effnet-lite-student": "student+efficientnet-lite0@96+efficientnet-lite1@96;power=0.5",
}


def is_ensemble_spec(name: str) -> bool:
    return name.lower() in ENSEMBLES or "+" in name or ";" in name


def parse_ensemble_spec(spec: str) -> tuple[list[tuple[str, int | None]], dict[str, float]]:
    """([(member name, size or None)], options) of a spec string; ConfigError names the bad part."""
    full = ENSEMBLES.get(spec.lower(), spec)
    head, _, opts = full.partition(";")
    members: list[tuple[str, int | None]] = []
    for part in head.split("+"):
        name, at, size = part.strip().partition("@")
        if not name:
            raise ConfigError(f"teacher ensemble {spec!r}: empty member in {head!r}")
        if at:
            try:
                members.append((name, int(size)))
            except ValueError as e:
                raise ConfigError(
                    f"teacher ensemble {spec!r}: member {part!r} needs an integer size after '@'"
                ) from e
        else:
            members.append((name, None))
    options: dict[str, float] = {}
    for opt in filter(None, (o.strip() for o in opts.split(";"))):
        key, eq, value = opt.partition("=")
        if key.strip() != "power" or not eq:
            raise ConfigError(f"teacher ensemble {spec!r}: unknown option {opt!r} (known: power=P)")
        try:
            p = float(value)
        except ValueError as e:
            raise ConfigError(f"teacher ensemble {spec!r}: power must be a number") from e
        if not 0.0 < p <= 1.0:
            raise ConfigError(f"teacher ensemble {spec!r}: power must be in (0, 1], got {p}")
        options["power"] = p
    return members, options


def uses_student(spec: str) -> bool:
    """Whether a teacher spec has the bare `student` member the pipeline must resolve."""
    if not is_ensemble_spec(spec):
        return spec.strip().lower() == STUDENT_MEMBER
    return any(name.lower() == STUDENT_MEMBER for name, _ in parse_ensemble_spec(spec)[0])


def with_student(spec: str, checkpoint: str | Path | None) -> tuple[str, str | None]:
    """(spec with the bare `student` member bound to `checkpoint`, warning or None).

    Without a checkpoint (no base dataset, pretraining off) the member is left out and the
    warning says so; a teacher made of nothing else is a ConfigError.
    """
    if not uses_student(spec):
        return spec, None
    members, options = parse_ensemble_spec(spec)
    kept = []
    for name, size in members:
        if name.lower() == STUDENT_MEMBER:
            if checkpoint is None:
                continue
            name = f"{STUDENT_MEMBER}:{checkpoint}"
        kept.append(name if size is None else f"{name}@{size}")
    if not kept:
        raise ConfigError(
            f"teacher {spec!r} needs the base-class pretrained student, and this run has none "
            "(no base dataset, or pretrain_student is off); choose another --teacher"
        )
    opts = ";".join(f"{k}={v:g}" for k, v in options.items())
    resolved = "+".join(kept) + (f";{opts}" if opts else "")
    warning = None
    if checkpoint is None:
        warning = (
            f"teacher {spec!r}: its 'student' member (the base-class pretrained student) is left "
            "out: this run has no base dataset or no student pretraining; the teacher is "
            f"{resolved!r}"
        )
    return resolved, warning


class EnsembleBackbone(FeatureBackbone):
    """Concatenated L2-normalised (optionally power-transformed) features of member backbones."""

    def __init__(
        self,
        members: list[FeatureBackbone],
        power: float = 1.0,
        name: str | None = None,
        cache_root: str | Path | bool | None = None,
        chunk_size: int = 16,
    ) -> None:
        if not members:
            raise ConfigError("a teacher ensemble needs at least one member backbone")
        super().__init__(max(m.input_size for m in members), mean=(0.0,) * 3, std=(1.0,) * 3)
        self.members = nn.ModuleList(members)
        self.power = float(power)
        self.feature_dim = sum(m.feature_dim for m in members)
        parts = "+".join(f"{m.arch_id}@{m.input_size}" for m in members)
        self.arch_id = f"ensemble({parts}" + (f";power={self.power:g})" if power != 1 else ")")
        self.name = name or self.arch_id
        self.pretrained = all(m.pretrained for m in members)
        # Members run on chunks of this many images: on the CPU, Lite0 at 224 px costs 107 ms
        # per image in batches of 16 and 176 ms in batches of 64 (one thread).
        self.chunk_size = int(chunk_size)
        if cache_root is False:
            self.cache_root: Path | None = None
        elif cache_root is None or cache_root is True:
            self.cache_root = default_feature_cache_root()
        else:
            self.cache_root = Path(cache_root)
        self._caches: dict[int, tuple[tuple[Any, ...], FeatureCache]] = {}

    def _cache(self, i: int) -> FeatureCache:
        """Member i's cache; its key is recomputed whenever a weight was modified in place."""
        m = self.members[i]
        sig = tuple((id(t), t._version) for t in m.state_dict(keep_vars=True).values())
        got = self._caches.get(i)
        if got is None or got[0] != sig:
            assert self.cache_root is not None
            key = backbone_key(m, m.arch_id, m.input_size, m.mean.tolist(), m.std.tolist())
            got = (sig, FeatureCache(self.cache_root / key[:32]))
            self._caches[i] = got
        return got[1]

    def member_features(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Raw features of member i (cached when gradients are off and the cache is on)."""
        m = self.members[i]

        def run(images: torch.Tensor) -> torch.Tensor:
            n = self.chunk_size
            if len(images) <= n:
                return m(images)
            return torch.cat([m(images[j : j + n]) for j in range(0, len(images), n)])

        if self.cache_root is not None and not torch.is_grad_enabled() and not self.training:
            return self._cache(i).features(run, x)
        return run(x)

    def transform(self, f: torch.Tensor) -> torch.Tensor:
        if self.power != 1.0:
            f = f.sign() * f.abs().pow(self.power)
        return F.normalize(f, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"backbone expects (B,3,H,W) images, got shape {tuple(x.shape)}")
        return torch.cat(
            [self.transform(self.member_features(i, x)) for i in range(len(self.members))], dim=1
        )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "members": [m.describe() for m in self.members],
            "power": self.power,
        }
