"""LoRA specialization: adapt the generator itself to the supports (DataDream, Kim et al.,
ECCV 2024), for classes the generator cannot draw, where textual inversion only moves one
word in a text space the generator never learned for them.

What is trained, all classes jointly in one run:
- LoRA (peft) on the UNet's attention projections (to_q, to_k, to_v, to_out.0), optionally
  on its ResNet blocks' convolutions (conv1, conv2: `unet_convs`) and on the text encoder's
  attention (q_proj, k_proj, v_proj, out_proj);
- with `prompt: token` (default), one placeholder token per class, `<tinyshot-lora-i>` in the
  caption template ("a photo of an <tinyshot-lora-i>"), initialised from `object` and trained
  together with the LoRA weights; with `prompt: name`, the class name ("a photo of a sandal",
  DataDream's prompt) and no token.

Why tokens trained with the LoRA, not TI's tokens reused: the LoRA result then depends on the
supports and its own settings alone (not on whether a TI run came first, so `lora` and `tint`
runs of one episode stay comparable and each can be resumed alone); `lora` needs no TI stage;
and a token trained with the adapted UNet fits what the UNet learns (pivotal tuning), where a
TI token was fitted to the frozen UNet of a generator that cannot draw the class (20% judged
fidelity on the concept-unknown probe, against 38% for jointly trained LoRA + tokens).

Training reads like diffusers' LoRA training scripts: AdamW, a cosine learning-rate schedule
with linear warm-up, the standard diffusion loss at t uniform in [t_min, t_max). Each step
draws `batch_size` supports, timesteps and noises per class from seeds of (seed, step,
class) alone, and a checkpoint (LoRA weights, tokens, optimizer and loss-scaler state, step,
RNG state) is written every 10% of the steps or 60 s and on Ctrl-C/SIGTERM, so a killed run
resumes bit-exactly. On a GPU the UNet runs in fp16/bf16 while the LoRA weights and tokens
stay fp32 (as diffusers' scripts cast them), with TI's GradScaler-based loss scaling in fp16.

The folder (`specialize_lora`):

    specialize-lora.json              fingerprint (settings, classes, images, model); a
                                      different one is refused
    lora_state.pt                     checkpoint while training
    pytorch_lora_weights.safetensors  diffusers' LoRA format: a user's
                                      StableDiffusionPipeline.load_lora_weights(folder) loads it
    learned_embeds-<i>.safetensors    class i's token, diffusers' textual-inversion format
                                      (pipeline.load_textual_inversion); prompt: token only
    tokens.safetensors                the (N, D) token vectors
    supports.safetensors              the support latents per class (img2img sampling)
    lora.json                         the result: classes, prompts, support loss before/after,
                                      sampling settings, timings; written last (= done)
    <c>.json, <c>.safetensors         with inversion (lora-tint): per class, DDIM + null-text
                                      inversion of every support through the adapted model
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from tinyshot.diffusion.artifacts import ClassArtifact, artifact_done, load_artifacts
from tinyshot.diffusion.config import SpecializeConfig
from tinyshot.diffusion.ddim import make_schedule, resolve_spacing
from tinyshot.diffusion.model import DiffusionModel, name_prompt
from tinyshot.diffusion.specialize import (
    EVAL_TIMESTEPS,
    _check_inputs,
    artifact_meta,
    claim_folder,
    inputs_fingerprint,
    invert_in_chunks,
    prepare_support_latents,
)
from tinyshot.diffusion.textual_inversion import (
    LossScaler,
    conditioned_loss,
    diffusion_loss,
    draw_step,
    encode_token_prompts,
    injected_tokens,
)
from tinyshot.diffusion.train_loop import StepPlan, checkpoint_interval, run_steps
from tinyshot.errors import ConfigError, DataError, TrainingError
from tinyshot.utils.device import to_device
from tinyshot.utils.io import atomic_write, read_json, write_json
from tinyshot.utils.logging import get_logger, quiet_weight_loading
from tinyshot.utils.seed import derive_seed

log = get_logger("diffusion.lora")

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# The UNet's ResNet-block convolutions (`unet_convs`): where a UNet decides shapes and layout,
# which attention-only LoRA leaves as the base model drew them.
UNET_CONV_TARGETS = ("conv1", "conv2")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
PROMPTS = ("token", "name")
WEIGHTS = "pytorch_lora_weights.safetensors"
RESULT = "lora.json"
CLAIM = "specialize-lora.json"
STATE = "lora_state.pt"
ADAPTER = "tinyshot"  # the adapter's name when loaded for sampling


@dataclass
class LoraTrainConfig:
    """DataDream's settings (rank 16, alpha 16, AdamW at 1e-4, cosine schedule, 100 warm-up
    steps); `batch_size` is images per class per step (5 classes x 2 = 10, about DataDream's
    8), `steps` the optimizer steps of the joint run (2000 = DataDream's ~400 per class for 5
    classes)."""

    steps: int = 2000
    lr: float = 1e-4
    rank: int = 16
    alpha: float = 16.0
    warmup_steps: int = 100
    batch_size: int = 2
    weight_decay: float = 1e-2
    text_encoder: bool = False  # LoRA on the text encoder's attention too
    unet_convs: bool = False  # LoRA on the UNet's ResNet-block convolutions too
    prompt: str = "token"  # "token": a learned token per class; "name": the class name
    init_token: str = "object"
    prompt_template: str | None = None  # None: the model's caption template
    t_min: int = 0
    t_max: int = 1000
    checkpoint_every: int = 0  # steps between checkpoints; 0 = every 10% of the steps
    checkpoint_seconds: float = 60.0  # ... or after this many seconds, whichever comes first
    seed: int = 0

    def validate(self) -> LoraTrainConfig:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"lora: {msg}")

        need(self.steps >= 0, f"steps must be >= 0, got {self.steps}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.rank >= 1, f"rank must be >= 1, got {self.rank}")
        need(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        need(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        need(self.batch_size >= 1, "batch_size must be >= 1")
        need(self.weight_decay >= 0, "weight_decay must be >= 0")
        need(self.prompt in PROMPTS, f"prompt must be one of {PROMPTS}, got {self.prompt!r}")
        need(0 <= self.t_min < self.t_max <= 1000, "need 0 <= t_min < t_max <= 1000")
        need(self.checkpoint_every >= 0, "checkpoint_every must be >= 0 (0 = 10%)")
        need(self.checkpoint_seconds > 0, "checkpoint_seconds must be > 0")
        if self.prompt_template is not None:
            need(self.prompt_template.count("{}") == 1, "prompt_template needs exactly one {}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoraTrainConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown lora options: {sorted(unknown)}")
        return cls(**d)


# How often to checkpoint changes no result (resume is bit-exact), so a resume may change it.
NOT_FINGERPRINTED = ("checkpoint_every", "checkpoint_seconds")
# Options added later, left out of the fingerprint at their default so that folders made
# before them keep resuming.
ADDED_LATER = {"unet_convs": False}


def fingerprinted(cfg: LoraTrainConfig) -> dict[str, Any]:
    d = {k: v for k, v in cfg.to_dict().items() if k not in NOT_FINGERPRINTED}
    return {k: v for k, v in d.items() if k not in ADDED_LATER or v != ADDED_LATER[k]}


# The SpecializeConfig fields the LoRA folder depends on: sampling settings recorded for the
# sampler, and the inversion through the adapted model (lora-tint).
SAMPLING_FIELDS = (
    "guidance",
    "num_inference_steps",
    "timestep_spacing",
    "inversion",
    "nti_inner_steps",
    "nti_lr",
    "nti_lr_decay",
    "nti_early_stop",
    "inversion_batch_size",
)


def lora_tokens(n: int) -> list[str]:
    """Placeholder tokens of a LoRA specialization (not TI's <tinyshot-i>: both can be loaded
    into one pipeline)."""
    return [f"<tinyshot-lora-{i}>" for i in range(n)]


def lr_factor(step: int, cfg: LoraTrainConfig) -> float:
    """diffusers' cosine schedule with warm-up (get_cosine_schedule_with_warmup): linear from 0
    over warmup_steps, then half a cosine down to 0 at the last step."""
    if step < cfg.warmup_steps:
        return step / max(1, cfg.warmup_steps)
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def peft_config(cfg: LoraTrainConfig, targets: tuple[str, ...]):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        init_lora_weights="gaussian",  # as diffusers' scripts: A ~ N(0, 1/r), B = 0
        target_modules=list(targets),
    )


def add_adapters(
    model: DiffusionModel, cfg: LoraTrainConfig
) -> list[tuple[str, torch.nn.Parameter]]:
    """Inject fresh LoRA layers (B = 0: the adapted model starts as the base model); returns
    the trainable parameters by name, in fp32 whatever the UNet's dtype. Their random A draws
    come from the config's seed, not the global RNG."""
    from peft import inject_adapter_in_model

    parts = [("unet", model.unet, unet_targets(cfg))]
    if cfg.text_encoder:
        parts.append(("text_encoder", model.text_encoder, TEXT_ENCODER_TARGETS))
    named = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "lora-init"))
        for prefix, module, targets in parts:
            inject_adapter_in_model(peft_config(cfg, targets), module)
            for n, p in module.named_parameters():
                if "lora_" in n:
                    p.data = p.data.float()
                    p.requires_grad_(True)
                    named.append((f"{prefix}.{n}", p))
    return named


def unet_targets(cfg: LoraTrainConfig) -> tuple[str, ...]:
    return UNET_TARGETS + (UNET_CONV_TARGETS if cfg.unet_convs else ())


def remove_adapters(model: DiffusionModel) -> None:
    """Back to the base model: LoRA layers replaced by the layers they wrap (not merged, so
    the base weights are exactly as before)."""
    from diffusers.utils import recurse_remove_peft_layers

    for module in (model.unet, model.text_encoder):
        recurse_remove_peft_layers(module)
        if getattr(module, "peft_config", None) is not None:
            del module.peft_config
        if getattr(module, "_hf_peft_config_loaded", None):
            module._hf_peft_config_loaded = None
    model._empty = None  # a text-encoder LoRA changes the empty-prompt embedding


def lora_parameter_count(model: DiffusionModel, cfg: LoraTrainConfig) -> int:
    """Trainable LoRA parameters (tokens excluded) for this model and config."""
    try:
        return sum(p.numel() for _, p in add_adapters(model, cfg))
    finally:
        remove_adapters(model)


def _prompts(model: DiffusionModel, class_names: list[str], cfg: LoraTrainConfig) -> list[str]:
    if cfg.prompt == "name":
        return [name_prompt(model, c) for c in class_names]
    template = cfg.prompt_template or model.caption_template
    return [template.format(t) for t in lora_tokens(len(class_names))]


def train_lora(
    model: DiffusionModel,
    latents: list[torch.Tensor],
    class_names: list[str],
    cfg: LoraTrainConfig,
    out_dir: str | Path,
    show_progress: bool | None = None,
) -> list[float]:
    """Train LoRA (+ one token per class with prompt "token") on all classes' support latents
    and write the diffusers-format files to out_dir; the model is left without adapters.
    Returns the losses of the steps this call ran.

    Resumes bit-exactly from out_dir/lora_state.pt when it exists."""
    out = Path(out_dir)
    n = len(latents)
    state_path = out / STATE
    # 1. LoRA layers and, with prompt "token", one token per class initialised from `object`.
    params = add_adapters(model, cfg)
    tokens = lora_tokens(n) if cfg.prompt == "token" else []
    vectors = None
    if tokens:
        ids = model.ensure_tokens(tokens, cfg.init_token)
        init = model.token_init_vector(cfg.init_token).to(model.device)
        vectors = init.repeat(n, 1).requires_grad_(True)
    trainable = [p for _, p in params] + ([vectors] if vectors is not None else [])
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = LossScaler.for_model(model)
    try:
        # 2. Resume.
        start = 0
        if state_path.is_file():
            start = _load_state(state_path, params, vectors, opt, scaler, model.device)
            log.info("LoRA training: resuming at step %d/%d", start, cfg.steps)
        # 3. The condition: constant unless tokens or the text encoder's LoRA train.
        prompt_ids = model.tokenize(_prompts(model, class_names, cfg))
        constant = None
        if vectors is None and not cfg.text_encoder:
            with torch.no_grad():
                constant = model.text_encoder(prompt_ids)[0].float()

        def condition() -> torch.Tensor:
            if constant is not None:
                return constant
            if vectors is None:
                return model.text_encoder(prompt_ids)[0].float()
            with injected_tokens(model, ids, vectors):
                return model.text_encoder(prompt_ids)[0].float()

        per = cfg.batch_size

        # 4. One step: draws from (seed, step, class), the diffusion loss, backward, AdamW.
        def backward(step: int) -> torch.Tensor:
            z0, t, noise = draw_step(latents, per, (cfg.seed, "lora", step), cfg.t_min, cfg.t_max)
            cond = condition().repeat_interleave(per, 0)
            t, noise = to_device(t, model.device), to_device(noise, model.device)
            loss = diffusion_loss(model, z0, cond, t, noise).mean()
            scaler.backward(loss, opt)
            return loss.detach()

        def update(step: int) -> None:
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, cfg)
            scaler.step(opt)

        def save(done: int) -> None:
            _save_state(state_path, params, vectors, opt, scaler, done)

        plan = StepPlan(
            "LoRA training",
            cfg.steps,
            start,
            checkpoint_interval(cfg.steps, cfg.checkpoint_every),
            cfg.checkpoint_seconds,
        )
        history = run_steps(plan, backward, update, save, model.device, log, show_progress)
        if scaler.skipped:
            log.info("LoRA training: %d fp16 overflow step(s) skipped", scaler.skipped)
        # 5. Save in diffusers' formats; the losses of this attempt go into lora.json.
        _save_lora(out, model, cfg, tokens, vectors)
        return history.tolist()[start:]
    finally:
        remove_adapters(model)


def _save_state(
    path: Path,
    params: list[tuple[str, torch.nn.Parameter]],
    vectors: torch.Tensor | None,
    opt: torch.optim.Optimizer,
    scaler: LossScaler,
    step: int,
) -> None:
    state = {
        "lora": {n: p.detach().cpu().clone() for n, p in params},
        "vectors": None if vectors is None else vectors.detach().cpu().clone(),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "step": step,
        "rng": torch.get_rng_state(),
    }
    atomic_write(path, lambda p: torch.save(state, p))


def _load_state(
    path: Path,
    params: list[tuple[str, torch.nn.Parameter]],
    vectors: torch.Tensor | None,
    opt: torch.optim.Optimizer,
    scaler: LossScaler,
    device: torch.device,
) -> int:
    state = torch.load(path, map_location=device, weights_only=True)
    saved = state["lora"]
    if sorted(saved) != sorted(n for n, _ in params) or (state["vectors"] is None) != (
        vectors is None
    ):
        raise TrainingError(f"{path}: LoRA checkpoint of other settings; delete it")
    with torch.no_grad():
        for n, p in params:
            p.copy_(saved[n])
        if vectors is not None:
            vectors.copy_(state["vectors"])
    opt.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"].cpu())
    return int(state["step"])


def _save_lora(
    out: Path,
    model: DiffusionModel,
    cfg: LoraTrainConfig,
    tokens: list[str],
    vectors: torch.Tensor | None,
) -> None:
    """pytorch_lora_weights.safetensors as diffusers' training scripts write it
    (get_peft_model_state_dict -> convert_state_dict_to_diffusers -> save_lora_weights, with
    the peft config as adapter metadata so rank and alpha load as trained), and the tokens."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    layers: dict[str, Any] = {}
    for name, module in (("unet", model.unet), ("text_encoder", model.text_encoder)):
        if getattr(module, "peft_config", None):
            sd = get_peft_model_state_dict(module)
            layers[f"{name}_lora_layers"] = {
                k: v.detach().float().cpu().contiguous()
                for k, v in convert_state_dict_to_diffusers(sd).items()
            }
            layers[f"{name}_lora_adapter_metadata"] = module.peft_config["default"].to_dict()
    tmp = out / ".lora-weights.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    StableDiffusionLoraLoaderMixin.save_lora_weights(tmp, **layers, weight_name=WEIGHTS)
    os.replace(tmp / WEIGHTS, out / WEIGHTS)
    shutil.rmtree(tmp, ignore_errors=True)
    if vectors is not None:
        v = vectors.detach().float().cpu()
        for i, tok in enumerate(tokens):
            atomic_write(
                out / f"learned_embeds-{i}.safetensors",
                lambda p, i=i, tok=tok: save_file({tok: v[i].clone().contiguous()}, p),
            )
        atomic_write(out / "tokens.safetensors", lambda p: save_file({"vectors": v}, p))


@dataclass
class LoraSpecialization:
    """A finished LoRA folder: what sampling from the adapted model needs."""

    folder: Path
    class_names: list[str]
    prompts: list[str]  # one per class: the token prompt or the class-name prompt
    tokens: list[str]  # placeholder tokens (empty with prompt "name")
    vectors: torch.Tensor | None  # (N, D) token vectors
    support_latents: list[torch.Tensor]
    meta: dict[str, Any]

    @property
    def guidance(self) -> float:
        return float(self.meta["sampling"]["guidance"])

    @property
    def num_inference_steps(self) -> int:
        return int(self.meta["sampling"]["num_inference_steps"])

    @property
    def timestep_spacing(self) -> str:
        return str(self.meta["sampling"]["timestep_spacing"])

    @property
    def inverted(self) -> bool:
        return all(artifact_done(self.folder, c) for c in range(len(self.class_names)))

    def artifacts(self) -> list[ClassArtifact]:
        """Per class the supports' DDIM + null-text inversion through the adapted model."""
        if not self.inverted:
            raise DataError(f"{self.folder}: no inversion through the adapted model (lora-tint)")
        return load_artifacts(self.folder)

    @torch.no_grad()
    def condition(self, model: DiffusionModel) -> torch.Tensor:
        """(N, 77, D) prompt embeddings; call inside lora_adapter (a text-encoder LoRA)."""
        if self.vectors is None:
            return model.encode_text(self.prompts)
        template = self.meta["prompt_template"]
        return encode_token_prompts(model, template, self.tokens, self.vectors.to(model.device))

    def digest(self) -> str:
        """Hash of the weights, tokens and (when present) inversion: stores made from other
        ones are refused."""
        import hashlib

        h = hashlib.sha256((self.folder / WEIGHTS).read_bytes())
        if self.vectors is not None:
            h.update(self.vectors.numpy().tobytes())
        if self.inverted:
            for a in load_artifacts(self.folder):
                for t in a.tensors().values():
                    h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]

    @classmethod
    def load(cls, folder: str | Path) -> LoraSpecialization:
        folder = Path(folder)
        if not (folder / RESULT).is_file() or not (folder / WEIGHTS).is_file():
            raise DataError(f"{folder}: no finished LoRA specialization ({RESULT}, {WEIGHTS})")
        return cls.from_folder(folder, read_json(folder / RESULT))

    @classmethod
    def from_folder(cls, folder: Path, meta: dict[str, Any]) -> LoraSpecialization:
        """The specialization from its tensors in `folder` and its record `meta`."""
        from safetensors.torch import load_file

        names = list(meta["class_names"])
        vectors = None
        if meta.get("tokens"):
            vectors = load_file(folder / "tokens.safetensors")["vectors"]
        sup = load_file(folder / "supports.safetensors")
        return cls(
            folder=folder,
            class_names=names,
            prompts=list(meta["prompts"]),
            tokens=list(meta.get("tokens") or []),
            vectors=vectors,
            support_latents=[sup[str(c)] for c in range(len(names))],
            meta=meta,
        )


@contextlib.contextmanager
def lora_adapter(model: DiffusionModel, spec: LoraSpecialization) -> Iterator[DiffusionModel]:
    """The model with the folder's LoRA loaded the way a user's pipeline loads it
    (StableDiffusionLoraLoaderMixin: lora_state_dict, load_lora_into_unet /
    load_lora_into_text_encoder); the base model again on exit."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin as Loader

    state, alphas, metadata = Loader.lora_state_dict(
        str(spec.folder), weight_name=WEIGHTS, return_lora_metadata=True
    )
    try:
        with quiet_weight_loading():
            Loader.load_lora_into_unet(
                state, alphas, model.unet, adapter_name=ADAPTER, metadata=metadata
            )
            if any(k.startswith("text_encoder.") for k in state):
                Loader.load_lora_into_text_encoder(
                    state,
                    alphas,
                    model.text_encoder,
                    prefix="text_encoder",
                    adapter_name=ADAPTER,
                    metadata=metadata,
                )
        model._empty = None  # the empty prompt through the adapted text encoder
        if spec.tokens:
            model.ensure_tokens(spec.tokens)
        yield model
    finally:
        remove_adapters(model)


def specialize_lora(
    model: DiffusionModel,
    images_per_class: list[list[Image.Image]],
    class_names: list[str],
    config: LoraTrainConfig | None = None,
    out_dir: str | Path = "specialized-lora",
    sampling: SpecializeConfig | None = None,
    invert: bool = False,
    show_progress: bool | None = None,
) -> LoraSpecialization:
    """LoRA training on all classes jointly (resumable), then, with `invert`, DDIM + null-text
    inversion of every support through the adapted model (lora-tint; resumable by batch).

    `sampling` gives the DDIM steps, guidance, spacing and inversion settings (and how supports
    are upscaled); the model comes back without adapters."""
    cfg = (config or LoraTrainConfig()).validate()
    spec = (sampling or SpecializeConfig()).validate()
    _check_inputs(images_per_class, class_names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    latents, digest = prepare_support_latents(model, images_per_class, spec)
    fp = {
        "config": fingerprinted(cfg),
        "sampling": {k: getattr(spec, k) for k in SAMPLING_FIELDS},
        **inputs_fingerprint(model, class_names, [len(x) for x in images_per_class], digest),
    }
    claim_folder(out, fp, CLAIM, NOT_FINGERPRINTED)
    if not (out / RESULT).is_file():
        _train_and_record(model, latents, class_names, cfg, spec, out, show_progress, t0)
    result = LoraSpecialization.load(out)
    if invert and not result.inverted:
        _invert(model, result, latents, spec, out, show_progress)
    return result


def _train_and_record(
    model: DiffusionModel,
    latents: list[torch.Tensor],
    class_names: list[str],
    cfg: LoraTrainConfig,
    spec: SpecializeConfig,
    out: Path,
    show_progress: bool | None,
    t0: float,
) -> None:
    from safetensors.torch import save_file

    n = len(class_names)
    prep_s = time.perf_counter() - t0
    atomic_write(
        out / "supports.safetensors",
        lambda p: save_file(
            {str(c): z.float().cpu().contiguous() for c, z in enumerate(latents)}, p
        ),
    )
    # The support loss at fixed timesteps and noise, before (base model, initial token or the
    # class name) and after (adapted model, learned token): health's "specialization moved
    # the model's prediction" figure.
    template = cfg.prompt_template or model.caption_template
    tokens = lora_tokens(n) if cfg.prompt == "token" else []
    prompts = _prompts(model, class_names, cfg)
    with torch.no_grad():
        if tokens:
            init = model.token_init_vector(cfg.init_token).repeat(n, 1).to(model.device)
            before_cond = encode_token_prompts(model, template, tokens, init)
        else:
            before_cond = model.encode_text(prompts)
    before = conditioned_loss(model, latents, before_cond, EVAL_TIMESTEPS, cfg.seed)
    log.info(
        "LoRA training: %d classes, %d steps, rank %d, lr %g%s",
        n, cfg.steps, cfg.rank, cfg.lr, ", text encoder too" if cfg.text_encoder else "",
    )  # fmt: skip
    t1 = time.perf_counter()
    losses = train_lora(model, latents, class_names, cfg, out, show_progress)
    train_s = time.perf_counter() - t1
    meta = {
        "format": "tinyshot.lora",
        "class_names": list(class_names),
        "prompt": cfg.prompt,
        "prompt_template": template,
        "prompts": prompts,
        "tokens": tokens,
        "config": cfg.to_dict(),
        "sampling": {
            **{k: getattr(spec, k) for k in SAMPLING_FIELDS},
            "timestep_spacing": resolve_spacing(model, spec.timestep_spacing),
        },
        "model_id": model.model_id,
        "targets": {
            "unet": list(unet_targets(cfg)),
            "text_encoder": list(TEXT_ENCODER_TARGETS) if cfg.text_encoder else [],
        },
        "parameters": None,
        "timing": {"prepare_s": prep_s, "train_s": train_s},
        # mean loss per tenth of the steps this attempt ran (all of them unless resumed)
        "loss_curve": [
            sum(chunk) / len(chunk)
            for k in range(10)
            if (chunk := losses[k * len(losses) // 10 : (k + 1) * len(losses) // 10])
        ],
    }
    result = LoraSpecialization.from_folder(out, meta)
    with lora_adapter(model, result):
        after = conditioned_loss(model, latents, result.condition(model), EVAL_TIMESTEPS, cfg.seed)
        meta["parameters"] = sum(
            p.numel() for m in (model.unet, model.text_encoder)
            for k, p in m.named_parameters() if "lora_" in k
        )  # fmt: skip
    meta["stats"] = {
        "support_loss_init": [float(v) for v in before],
        "support_loss_final": [float(v) for v in after],
        "eval_timesteps": EVAL_TIMESTEPS,
    }
    write_json(out / RESULT, meta)  # last: the folder is done
    (out / STATE).unlink(missing_ok=True)
    log.info(
        "LoRA support loss (fixed t, noise): %.5f -> %.5f",
        before.mean().item(), after.mean().item(),
    )  # fmt: skip


def _invert(
    model: DiffusionModel,
    lora: LoraSpecialization,
    latents: list[torch.Tensor],
    spec: SpecializeConfig,
    out: Path,
    show_progress: bool | None,
) -> None:
    """NTI (or NPI) of every support through the adapted model, conditioned on the class's
    LoRA prompt; artifacts as specialize writes them (lora-tint samples from them)."""
    n = len(lora.class_names)
    spacing = resolve_spacing(model, spec.timestep_spacing)
    schedule = make_schedule(model, spec.num_inference_steps, spacing)
    stats = lora.meta["stats"]
    before = torch.tensor(stats["support_loss_init"])
    after = torch.tensor(stats["support_loss_final"])
    zeros = torch.zeros(model.embed_dim)
    with lora_adapter(model, lora):
        cond = lora.condition(model)
        invert_in_chunks(
            model, spec, out, latents, cond, schedule, n, show_progress,
            lambda c, res, inv_s, chunk: ClassArtifact(
                class_index=c,
                class_name=lora.class_names[c],
                token=lora.tokens[c] if lora.tokens else lora.prompts[c],
                prompt_template=lora.meta["prompt_template"] if lora.tokens else "{}",
                token_embedding=lora.vectors[c].clone() if lora.vectors is not None else zeros,
                z_T=res.z_T.float().cpu().clone(),
                null_embeddings=res.null_embeddings.float().cpu().clone(),
                support_latents=latents[c].float().cpu().clone(),
                timesteps=schedule.timesteps.clone(),
                meta={
                    **artifact_meta(
                        model, spec, spacing, c, before, after, res,
                        torch.arange(len(res.z_T)), {}, inv_s, chunk,
                    ),
                    "specialization": "lora",
                    "lora": str(out / WEIGHTS),
                },
            ),
            lora.class_names,
        )  # fmt: skip
