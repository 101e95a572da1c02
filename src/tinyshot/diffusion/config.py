"""Plain, JSON-serialisable settings for specialization (TI + inversion); paper defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from tinyshot.errors import ConfigError

INVERSIONS = ("nti", "npi")
OPTIMIZERS = ("adamw", "adam")
UPSCALE_MODES = ("auto", "sr", "bilinear")
SR_MODELS = ("x4plus", "animevideov3")
SPACINGS = ("leading", "trailing", "linspace")
# The offline demo's DDIM step count: the shipped concept-known generator draws its classes
# better at 6 steps than at 10 or more (docs/generator.md, "Fewer DDIM steps"), and its
# fidelity record is measured there. PipelineConfig and `tinyshot fidelity` both read it.
DEMO_DDIM_STEPS = 6

# method -> (specialization, sampling). Specialization: none, "ti" (textual inversion,
# diffusion.specialize) or "lora" (diffusion.lora). Sampling: "noise" (fresh noise, the class
# prompt, the empty-prompt null), "img2img" (a support latent noised to a random strength and
# denoised: DA-Fusion) or "tint" (a support's inverted z_T blended with noise, its per-timestep
# null embeddings: Eq. 3-4).
METHOD_PARTS = {
    "tint": ("ti", "tint"),
    "ti": ("ti", "noise"),
    "dafusion": ("ti", "img2img"),
    "name": ("none", "noise"),
    "lora": ("lora", "noise"),
    "lora-dafusion": ("lora", "img2img"),
    "lora-tint": ("lora", "tint"),
}
METHODS = tuple(METHOD_PARTS)
LORA_METHODS = tuple(m for m, (spec, _) in METHOD_PARTS.items() if spec == "lora")


@dataclass
class SpecializeConfig:
    """TI over all classes jointly, then DDIM + null-text (or negative-prompt) inversion.

    Defaults follow the paper (5k TI steps at lr 1e-3, t in [250, 1000), NTI with 10 inner
    steps, CFG 7.5, 50 DDIM steps) and the authors' code (AdamW). timestep_spacing None picks
    "trailing" (the authors' choice for SD 1.5) unless the model's last training alpha is
    below 1e-4 (e.g. cosine schedules), where starting at t=999 would divide the noise
    prediction by ~1e-5 when predicting x0; then "leading". `ti_batch_size` is images per class per step: the N tokens train together, each
    receiving exactly the gradient of its own class, as N separate runs would.
    """

    ti_steps: int = 5000
    ti_lr: float = 1e-3
    ti_optimizer: str = "adamw"
    ti_weight_decay: float = 1e-2
    ti_batch_size: int = 1
    ti_checkpoint_every: int = 0  # steps between TI checkpoints; 0 = every 10% of ti_steps
    ti_checkpoint_seconds: float = 60.0  # ... or after this many seconds, whichever comes first
    t_min: int = 250
    t_max: int = 1000
    init_token: str = "object"
    prompt_template: str | None = None
    inversion: str = "nti"
    nti_inner_steps: int = 10
    nti_lr: float = 1e-2
    nti_lr_decay: bool = True
    nti_early_stop: float = 1e-5
    inversion_batch_size: int = 8  # images per inversion batch, saved as each finishes; 0 = all
    guidance: float = 7.5
    num_inference_steps: int = 50
    timestep_spacing: str | None = None
    upscale: str = "auto"
    sr_model: str = "x4plus"
    sr_input_size: int = 96
    seed: int = 0

    def validate(self) -> SpecializeConfig:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(self.ti_steps >= 0, f"ti_steps must be >= 0, got {self.ti_steps}")
        need(self.ti_lr > 0, f"ti_lr must be > 0, got {self.ti_lr}")
        need(self.ti_optimizer in OPTIMIZERS, f"ti_optimizer must be one of {OPTIMIZERS}")
        need(self.ti_batch_size >= 1, "ti_batch_size must be >= 1")
        need(self.ti_checkpoint_every >= 0, "ti_checkpoint_every must be >= 0 (0 = 10%)")
        need(self.ti_checkpoint_seconds > 0, "ti_checkpoint_seconds must be > 0")
        need(
            0 <= self.t_min < self.t_max <= 1000,
            f"need 0 <= t_min < t_max <= 1000, got t_min={self.t_min}, t_max={self.t_max}",
        )
        need(self.inversion in INVERSIONS, f"inversion must be one of {INVERSIONS}")
        need(self.nti_inner_steps >= 0, "nti_inner_steps must be >= 0")
        need(self.nti_lr > 0, "nti_lr must be > 0")
        need(self.inversion_batch_size >= 0, "inversion_batch_size must be >= 0 (0 = all)")
        need(self.guidance >= 1.0, f"guidance must be >= 1, got {self.guidance}")
        need(1 <= self.num_inference_steps <= 1000, "num_inference_steps must be in [1, 1000]")
        need(
            self.timestep_spacing is None or self.timestep_spacing in SPACINGS,
            f"timestep_spacing must be one of {SPACINGS} or None (auto)",
        )
        need(self.upscale in UPSCALE_MODES, f"upscale must be one of {UPSCALE_MODES}")
        need(self.sr_model in SR_MODELS, f"sr_model must be one of {SR_MODELS}")
        need(self.sr_input_size >= 8, "sr_input_size must be >= 8")
        if self.prompt_template is not None:
            need(
                self.prompt_template.count("{}") == 1,
                f"prompt_template needs exactly one {{}} for the token: {self.prompt_template!r}",
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpecializeConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown specialize options: {sorted(unknown)}")
        return cls(**d)
