"""One bundle for a Stable Diffusion 1.x style model (UNet, CLIP text encoder, tokenizer, DDIM
scheduler, optional VAE), loaded from a diffusers folder or hub id, or built tiny for tests.

A folder without `vae/` is a pixel-space model: latents are the images mapped to [-1, 1]. The
project's own offline generator uses that layout; TI, NTI and generation treat both alike.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinyshot.diffusion.sd15 import (
    SD15_SCHEDULER,
    _init_device,
    _modules,
    sd15_configs,
    write_model_index,
    write_sd15_config_folder,
)
from tinyshot.errors import ConfigError, ModelError
from tinyshot.utils.device import resolve_device, resolve_dtype
from tinyshot.utils.logging import get_logger, quiet_weight_loading

log = get_logger("diffusion")

DEFAULT_TEMPLATE = "a photo of an {}"
NAME_TEMPLATE = "a photo of a {}"  # class-name prompts (the `name` baseline, LoRA by name)
TINYSHOT_JSON = "tinyshot.json"
SUPPORTED_PREDICTION = ("epsilon", "v_prediction", "sample")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
EXPECTED_LAYOUT = (
    "expected a diffusers Stable Diffusion 1.x folder with unet/, text_encoder/, tokenizer/, "
    "scheduler/ and vae/ (model_index.json; safety_checker/ and feature_extractor/ are "
    "ignored), or a single-file .safetensors/.ckpt checkpoint"
)


@dataclass
class DiffusionModel:
    """The parts TI, NTI and generation need, on one device; the text encoder stays fp32."""

    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    vae: Any | None = None
    model_id: str = "unnamed"
    caption_template: str = DEFAULT_TEMPLATE
    image_size: int | None = None
    # How the training images were prepared (tinyshot.json "image_prep"); None: resize.
    image_prep_record: dict[str, Any] | None = None
    # Captions the model was trained with per class name (tinyshot.json "class_captions").
    class_captions: dict[str, str] = field(default_factory=dict)
    # DDIM steps and judged class fidelity per guidance of the model's own fidelity check
    # (tinyshot.json "fidelity"); None when it records none (hub models).
    fidelity_record: dict[str, Any] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    _empty: torch.Tensor | None = field(default=None, repr=False)

    # -- geometry -------------------------------------------------------------------------
    @property
    def pixel_space(self) -> bool:
        return self.vae is None

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def resolution(self) -> int:
        """Pixel size of the square images the model makes and inverts."""
        if self.pixel_space and self.image_size:
            return int(self.image_size)
        return self.latent_size * self.vae_scale_factor

    @property
    def image_prep(self):
        """The generator's image preparation (data.transforms.ImagePrep) at its resolution."""
        from tinyshot.data.transforms import ImagePrep

        return ImagePrep.from_dict(self.image_prep_record, self.resolution, self.model_id)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)

    @property
    def embed_dim(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    @property
    def max_length(self) -> int:
        return min(
            int(self.tokenizer.model_max_length),
            int(self.text_encoder.config.max_position_embeddings),
        )

    # -- images <-> latents ---------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """(N,3,H,W) in [0,1] -> fp32 latents; the VAE's distribution mean, as the official code."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"encode expects (N,3,H,W) images, got {tuple(images.shape)}")
        x = images.to(self.device, torch.float32) * 2 - 1
        if self.vae is None:
            return x
        out = []
        sf = float(self.vae.config.scaling_factor)
        for chunk in x.split(batch_size):
            dist = self.vae.encode(chunk.to(self.vae.dtype)).latent_dist
            out.append(dist.mean.float() * sf)
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Latents -> fp32 images in [0,1] on the model device."""
        z = latents.to(self.device, torch.float32)
        if self.vae is None:
            return ((z + 1) / 2).clamp(0, 1)
        sf = float(self.vae.config.scaling_factor)
        out = []
        for chunk in z.split(batch_size):
            x = self.vae.decode((chunk / sf).to(self.vae.dtype)).sample.float()
            out.append(((x + 1) / 2).clamp(0, 1))
        return torch.cat(out)

    # -- text -------------------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return ids.to(self.device)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(B,77,D) fp32 last hidden states (what SD feeds to cross-attention)."""
        return self.text_encoder(self.tokenize(prompts))[0].float()

    @torch.no_grad()
    def empty_embedding(self) -> torch.Tensor:
        """The standard null-text embedding (empty prompt), (1,77,D) fp32, cached."""
        if self._empty is None:
            self._empty = self.encode_text([""])
        return self._empty

    def ensure_tokens(self, tokens: list[str], init_word: str = "object") -> list[int]:
        """Add placeholder tokens (idempotent); new embedding rows start as `init_word`'s row.

        Existing rows are copied unchanged, so every original token keeps its exact embedding.
        The table stays frozen: TI trains its own (N, D) parameter, injected by a forward hook
        (textual_inversion.injected_tokens), so backward never builds a vocab x dim gradient
        for it (49,410 x 768 fp32 = 152 MB at SD size, per step, never used).
        """
        missing = [t for t in tokens if t not in self.tokenizer.get_vocab()]
        if missing:
            self.tokenizer.add_tokens(missing)
        ids = self.tokenizer.convert_tokens_to_ids(tokens)
        emb = self.text_encoder.get_input_embeddings()
        need = len(self.tokenizer)
        if emb.weight.shape[0] < need:
            init = self.token_init_vector(init_word, emb.weight)
            extra = init.expand(need - emb.weight.shape[0], -1)
            weight = torch.cat([emb.weight.detach(), extra.to(emb.weight)], 0)
            new = nn.Embedding.from_pretrained(weight, freeze=True)
            self.text_encoder.set_input_embeddings(new)
            self.text_encoder.config.vocab_size = need
        return list(ids)

    def token_init_vector(self, word: str, weight: torch.Tensor | None = None) -> torch.Tensor:
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ConfigError(f"init_token {word!r} must be a single CLIP token, it is {len(ids)}")
        w = self.text_encoder.get_input_embeddings().weight if weight is None else weight
        return w[ids[0]].detach().clone().float()

    @torch.no_grad()
    def set_token_embeddings(self, tokens: list[str], vectors: torch.Tensor) -> None:
        """Write learned vectors into the placeholder rows, so plain prompts use them."""
        ids = self.ensure_tokens(tokens)
        w = self.text_encoder.get_input_embeddings().weight
        w[torch.tensor(ids, device=w.device)] = vectors.to(w)

    # -- denoiser ---------------------------------------------------------------------------
    def eps(self, z: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Noise prediction in fp32 for fp32 latents; the UNet runs in the model dtype."""
        if t.ndim == 0:
            t = t.expand(z.shape[0])
        out = self.unet(
            z.to(self.dtype), t.to(self.device), encoder_hidden_states=ctx.to(self.dtype)
        ).sample
        return out.float()

    # -- persistence --------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        import diffusers
        import transformers

        return {
            "model_id": self.model_id,
            "pixel_space": self.pixel_space,
            "resolution": self.resolution,
            "latent_shape": list(self.latent_shape),
            "dtype": str(self.dtype).replace("torch.", ""),
            "scheduler": dict(self.scheduler.config),
            "versions": {
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
            },
        }

    def save(self, folder: str | Path) -> Path:
        """Write the diffusers layout (unet/, text_encoder/, tokenizer/, scheduler/, vae/?)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        try:
            self.unet.save_pretrained(tmp / "unet")
            self.text_encoder.save_pretrained(tmp / "text_encoder")
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            self.scheduler.save_pretrained(tmp / "scheduler")
            meta: dict[str, Any] = {
                "pixel_space": self.pixel_space,
                "image_size": self.resolution,
                "caption_template": self.caption_template,
            }
            if self.image_prep_record is not None:
                meta["image_prep"] = self.image_prep_record
            if self.class_captions:
                meta["class_captions"] = self.class_captions
            if self.vae is not None:
                self.vae.save_pretrained(tmp / "vae")
                write_model_index(
                    tmp,
                    scheduler=type(self.scheduler).__name__,
                    text_encoder=type(self.text_encoder).__name__,
                    tokenizer=type(self.tokenizer).__name__,
                    unet=type(self.unet).__name__,
                    vae=type(self.vae).__name__,
                )
            (tmp / TINYSHOT_JSON).write_text(json.dumps(meta, indent=2) + "\n")
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return folder


def name_prompt(model: DiffusionModel, class_name: str) -> str:
    """ "a photo of a {class name}": the model's own training caption when it was trained on the
    class (tinyshot.json class_captions), else the name with underscores as spaces."""
    if class_name in model.class_captions:
        return model.class_captions[class_name]
    words = " ".join(class_name.replace("_", " ").split())
    if not words:
        raise ConfigError(f"class name {class_name!r} has no words to put in a prompt")
    return NAME_TEMPLATE.format(words)


def make_ddim_scheduler(config: dict[str, Any], timestep_spacing: str | None = None):
    """A DDIMScheduler from any SD-family scheduler config, keeping the model's own
    prediction type, clip_sample / clip_sample_range and thresholding (the pixel-space
    generators were trained and are sampled with clip_sample=True, and their configs say so).

    A config without `clip_sample` does not clip: DDIMScheduler's own default (True) would
    clamp SD's latents (range about +-4) to +-1. stable-diffusion-v1-5's PNDM config says
    clip_sample: false, but converted and fine-tuned SD folders often lack the key, and
    diffusers' SD pipelines never clip latents."""
    from diffusers import DDIMScheduler

    pred = config.get("prediction_type", "epsilon")
    if pred not in SUPPORTED_PREDICTION:
        raise ModelError(
            f"scheduler prediction_type {pred!r} is not supported (scheduler_config.json "
            f"must say one of {', '.join(SUPPORTED_PREDICTION)})"
        )
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    cfg.setdefault("clip_sample", False)
    if timestep_spacing is not None:
        if timestep_spacing not in ("leading", "trailing", "linspace"):
            raise ConfigError(
                f"timestep_spacing must be leading, trailing or linspace, got {timestep_spacing!r}"
            )
        cfg["timestep_spacing"] = timestep_spacing
    return DDIMScheduler.from_config(cfg)


def _to(module: nn.Module, dev: torch.device, dt: torch.dtype) -> None:
    """Cast only when needed (diffusers warns on every dtype cast, even a no-op one); every
    floating parameter and buffer is checked, not only the first (fp16 weight files load as
    fp16, and a checkpoint may mix dtypes)."""
    module.to(dev)
    tensors = [*module.parameters(), *module.buffers()]
    if any(t.is_floating_point() and t.dtype != dt for t in tensors):
        module.to(dtype=dt)
    module.eval().requires_grad_(False)


def _prepare_modules(model: DiffusionModel) -> DiffusionModel:
    """Move to device/dtype, eval mode, no grads, SDPA attention on GPU."""
    dev, dt = model.device, model.dtype
    _to(model.unet, dev, dt)
    _to(model.text_encoder, dev, torch.float32)
    if model.vae is not None:
        _to(model.vae, dev, dt)
    if dev.type == "cuda":
        from diffusers.models.attention_processor import AttnProcessor2_0

        model.unet.set_attn_processor(AttnProcessor2_0())
    return model


def load_diffusion_model(
    path_or_hub_id: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    single_file_config: str | Path | None = None,
) -> DiffusionModel:
    """Load an SD 1.x model: a diffusers folder, a single-file .safetensors/.ckpt checkpoint,
    or a hub id.

    fp32 on CPU by default, fp16 on GPU; `vae/` is optional (pixel-space model). A single
    file takes its component configs from `single_file_config` (a diffusers folder; default
    SD 1.5's, so no hub access is needed).
    """
    dev = resolve_device(device if device is None or isinstance(device, str) else str(device))
    dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev)
    src = str(path_or_hub_id)
    path = Path(src).expanduser()
    load: Callable[[], DiffusionModel] | None = None
    if path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        load = partial(_load_single_file, path, dev, dt, single_file_config)
    elif path.exists():
        load = partial(_load_local, path, dev, dt)
    elif _HUB_ID.match(src) and not src.startswith((".", "/", "~")):
        load = partial(_load_hub, src, dev, dt)
    if load is not None:
        t0 = time.perf_counter()
        with quiet_weight_loading():  # one tinyshot line instead of a bar per component
            model = load()
        log.info(
            "loaded diffusion model %s (%s, %s) in %.1f s",
            Path(src).name or src,
            dev,
            str(dt).replace("torch.", ""),
            time.perf_counter() - t0,
        )
        return model
    raise ModelError(f"{src}: model folder not found ({EXPECTED_LAYOUT}, or a hub id)")


def _load_local(path: Path, dev: torch.device, dt: torch.dtype) -> DiffusionModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from tinyshot.diffusion.tokenizer import load_clip_tokenizer

    if not path.is_dir():
        raise ModelError(f"{path}: not a folder; {EXPECTED_LAYOUT}")
    missing = [s for s in ("unet", "text_encoder") if not (path / s / "config.json").is_file()]
    if missing:
        raise ModelError(f"{path}: no {', '.join(m + '/config.json' for m in missing)}; "
                         f"{EXPECTED_LAYOUT}{_layout_hint(path)}")  # fmt: skip
    meta: dict[str, Any] = {}
    if (path / TINYSHOT_JSON).is_file():
        meta = json.loads((path / TINYSHOT_JSON).read_text())
    sched_cfg = dict(SD15_SCHEDULER)
    sched_file = path / "scheduler" / "scheduler_config.json"
    if sched_file.is_file():
        sched_cfg = json.loads(sched_file.read_text())

    def component(cls, sub: str):
        folder = path / sub
        variant = weights_variant(folder)
        if variant is not None:
            log.debug("%s: only %s weights, loading variant=%r", folder, variant, variant)
        return cls.from_pretrained(folder, variant=variant)

    try:
        unet = component(UNet2DConditionModel, "unet")
        text_encoder = component(CLIPTextModel, "text_encoder")
        tok_dir = path / "tokenizer"
        tokenizer = load_clip_tokenizer(tok_dir if tok_dir.is_dir() else None)
        vae = None
        if (path / "vae" / "config.json").is_file() and not meta.get("pixel_space", False):
            vae = component(AutoencoderKL, "vae")
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{path}: cannot load model ({type(e).__name__}: {e})") from e
    model = DiffusionModel(
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=make_ddim_scheduler(sched_cfg),
        vae=vae,
        model_id=str(path.resolve()),
        caption_template=meta.get("caption_template", DEFAULT_TEMPLATE),
        image_size=meta.get("image_size"),
        image_prep_record=meta.get("image_prep"),
        class_captions=dict(meta.get("class_captions") or {}),
        fidelity_record=meta.get("fidelity") if isinstance(meta.get("fidelity"), dict) else None,
        device=dev,
        dtype=dt,
    )
    _check_shapes(model, path)
    return _prepare_modules(model)


# Weight file stems of diffusers models and transformers models.
_WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
_VARIANT_FILE = re.compile(
    r"^(?:diffusion_pytorch_model|model|pytorch_model)"
    r"(?:\.(?P<v1>[\w-]+?)(?:-\d{5}-of-\d{5})?\.(?:safetensors|bin)"  # stem.fp16.safetensors
    r"|\.(?:safetensors|bin)\.index\.(?P<v2>[\w-]+)\.json)$"  # stem.safetensors.index.fp16.json
)


def weights_variant(folder: str | Path) -> str | None:
    """The `variant` a component folder must be loaded with: None when it holds plain weights
    (diffusion_pytorch_model.safetensors, model.safetensors, their .bin or sharded index),
    else the variant of its files, e.g. "fp16" for diffusers' variant="fp16" layout
    (diffusion_pytorch_model.fp16.safetensors; preferred when there are several)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    names = {p.name for p in folder.iterdir() if p.is_file()}
    plain = {
        f"{stem}{ext}"
        for stem in _WEIGHT_STEMS
        for ext in (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
    }
    if names & plain:
        return None
    found = set()
    for name in names:
        m = _VARIANT_FILE.match(name)
        if m:
            found.add(m.group("v1") or m.group("v2"))
    if "fp16" in found:
        return "fp16"
    return found.pop() if len(found) == 1 else None


def _layout_hint(path: Path) -> str:
    """What the folder looks like instead, when that is recognisable."""
    cfg = path / "config.json"
    if cfg.is_file():
        try:
            d = json.loads(cfg.read_text())
        except ValueError:
            d = {}
        kind = d.get("_class_name") or d.get("model_type") or "?"
        if path.name in ("unet", "vae", "text_encoder") or kind in (
            "UNet2DConditionModel",
            "AutoencoderKL",
            "clip_text_model",
        ):
            return f" (this looks like one component, {kind}: pass its parent folder)"
        return f" (this is a {kind} model folder, not a text-to-image pipeline)"
    found = sorted(p.name for p in path.iterdir())[:8]
    return f" (found: {', '.join(found) or 'an empty folder'})"


def sd15_config_folder() -> Path:
    """SD 1.5's component configs + CLIP tokenizer, written once to the cache: the `config=`
    that lets diffusers' from_single_file load an original checkpoint offline."""
    from tinyshot.utils.paths import cache_dir

    folder = cache_dir() / "sd15-config"
    if not (folder / "model_index.json").is_file():
        cache_dir().mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".sd15-config."))
        write_sd15_config_folder(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _load_single_file(
    path: Path, dev: torch.device, dt: torch.dtype, config: str | Path | None = None
) -> DiffusionModel:
    """An original-format SD 1.x checkpoint (.safetensors/.ckpt, e.g. v1-5-pruned-emaonly)
    through diffusers' StableDiffusionPipeline.from_single_file, offline: the component
    configs come from `config` (a diffusers folder; default SD 1.5's, written from the
    package's copy), never from the hub. The safety checker is not loaded."""
    from diffusers import StableDiffusionPipeline

    cfg = Path(config) if config is not None else sd15_config_folder()
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path),
            config=str(cfg),
            local_files_only=True,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    except Exception as e:  # diffusers raises many types for a checkpoint it cannot map
        raise ModelError(
            f"{path}: cannot load as a Stable Diffusion 1.x single-file checkpoint with the "
            f"component configs of {cfg} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "only SD 1.x (UNet 320/640/1280/1280, CLIP ViT-L/14 text encoder) is supported "
            "offline. Other models: pass a diffusers folder"
        ) from e
    model = DiffusionModel(
        unet=pipe.unet,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        scheduler=make_ddim_scheduler(dict(pipe.scheduler.config)),
        vae=pipe.vae,
        model_id=str(path.resolve()),
        device=dev,
        dtype=dt,
    )
    _check_shapes(model, path)
    return _prepare_modules(model)


def read_image_prep(path_or_hub_id: str | Path):
    """A generator's ImagePrep from its tinyshot.json without loading weights; models without
    a record (Stable Diffusion folders, hub ids) resize to their resolution."""
    from tinyshot.data.transforms import ImagePrep

    path = Path(str(path_or_hub_id)).expanduser()
    meta: dict[str, Any] = {}
    if (path / TINYSHOT_JSON).is_file():
        meta = json.loads((path / TINYSHOT_JSON).read_text())
    size = meta.get("image_size")
    if size is None and (path / "unet" / "config.json").is_file():
        unet_cfg = json.loads((path / "unet" / "config.json").read_text())
        vae = 8 if (path / "vae").is_dir() and not meta.get("pixel_space") else 1
        size = int(unet_cfg.get("sample_size", 64)) * vae
    return ImagePrep.from_dict(meta.get("image_prep"), size, str(path / TINYSHOT_JSON))


def _load_hub(repo: str, dev: torch.device, dt: torch.dtype) -> DiffusionModel:
    try:
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        unet = UNet2DConditionModel.from_pretrained(repo, subfolder="unet")
        text_encoder = CLIPTextModel.from_pretrained(repo, subfolder="text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(repo, subfolder="tokenizer")
        vae = AutoencoderKL.from_pretrained(repo, subfolder="vae")
        sched_cfg = DDIMScheduler.load_config(repo, subfolder="scheduler")
    except Exception as e:  # network, missing repo, gated: all mean "cannot use this id"
        raise ModelError(
            f"{repo}: no such local folder, and the hub id could not be loaded "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "offline, pass a local diffusers folder"
        ) from e
    model = DiffusionModel(
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=make_ddim_scheduler(dict(sched_cfg)),
        vae=vae,
        model_id=repo,
        device=dev,
        dtype=dt,
    )
    return _prepare_modules(model)


def _check_shapes(model: DiffusionModel, path: Path) -> None:
    xattn = model.unet.config.cross_attention_dim
    if xattn != model.embed_dim:
        raise ModelError(
            f"{path}: unet cross_attention_dim {xattn} != text encoder hidden size {model.embed_dim}"
        )
    want = model.vae.config.latent_channels if model.vae is not None else 3
    if model.latent_channels != want:
        raise ModelError(f"{path}: unet in_channels {model.latent_channels}, expected {want}")


def build_tiny_diffusion_model(
    pixel_space: bool = False,
    image_size: int = 32,
    seed: int = 0,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
) -> DiffusionModel:
    """SD-architecture model with random weights and small channels, and the real CLIP tokenizer.

    The same diffusers/transformers classes as SD 1.5, so tests exercise the full-size code path.
    With a VAE (downsampling x4) a 32 px image becomes a 4x8x8 latent; the VAE's scaling factor
    is set so those latents have unit standard deviation, as SD's 0.18215 does for its VAE.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tinyshot.diffusion.tokenizer import load_clip_tokenizer

    if image_size % 8:
        raise ConfigError(f"image_size must be a multiple of 8, got {image_size}")
    dim = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=dim,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                projection_dim=dim,
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
            )
        )
        vae = None
        if not pixel_space:
            vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3,
                block_out_channels=(32, 32, 64),
                layers_per_block=1,
                latent_channels=4,
                norm_num_groups=32,
                sample_size=image_size,
            )
        channels = 3 if pixel_space else 4
        first_down = "DownBlock2D" if pixel_space else "CrossAttnDownBlock2D"
        first_up = "UpBlock2D" if pixel_space else "CrossAttnUpBlock2D"
        size = image_size if pixel_space else image_size // 4
        unet = UNet2DConditionModel(
            sample_size=size,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=(32, 64),
            layers_per_block=1,
            # Cross-attention at every level (as SD's 64x64 latents have), except at a pixel
            # model's full resolution, where 1024-token attention would dominate the cost.
            down_block_types=(first_down, "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", first_up),
            cross_attention_dim=dim,
            attention_head_dim=2,  # diffusers reads this as the number of heads (as SD 1.5)
            norm_num_groups=32,
        )
        if vae is not None:
            with torch.no_grad():
                probe = torch.rand(
                    8, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed)
                )
                std = float(vae.encode(probe * 2 - 1).latent_dist.mean.std())
            vae.register_to_config(scaling_factor=1.0 / std)
    model = DiffusionModel(
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=load_clip_tokenizer(),
        scheduler=make_ddim_scheduler(dict(SD15_SCHEDULER)),
        vae=vae,
        model_id=f"tiny-{'pixel' if pixel_space else 'latent'}-{image_size}px-seed{seed}",
        caption_template=DEFAULT_TEMPLATE,
        image_size=image_size,
    )
    model.device = resolve_device(
        device if device is None or isinstance(device, str) else str(device)
    )
    model.dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, model.device)
    return _prepare_modules(model)


def build_sd15_model(
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
    width_divisor: int = 1,
    sample_size: int | None = None,
    configs: dict[str, dict] | None = None,
    tag: str | None = None,
) -> DiffusionModel:
    """SD 1.5's UNet, VAE and CLIP text encoder with random weights, and the real CLIP tokenizer.

    The same classes and configs as the hub model, so speed and memory are the real ones;
    the outputs are noise. fp16 on GPU by default, the text encoder stays fp32 (as loading).
    `configs` replaces sd15_configs(width_divisor, sample_size) (e.g. sd15.rehearsal_configs),
    `tag` the model id's prefix.
    """
    from tinyshot.diffusion.tokenizer import load_clip_tokenizer

    dev = resolve_device(device if device is None or isinstance(device, str) else str(device))
    dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev)
    configs = configs or sd15_configs(width_divisor, sample_size)
    init_dev = _init_device(dev)
    with torch.random.fork_rng(devices=[init_dev] if init_dev.type == "cuda" else []):
        torch.manual_seed(seed)
        with init_dev:
            mods = _modules(configs)
    size = configs["unet"]["sample_size"] * 8
    tag = tag or ("sd15" if width_divisor == 1 else f"sd15-w{width_divisor}")
    model = DiffusionModel(
        unet=mods["unet"],
        text_encoder=mods["text_encoder"],
        tokenizer=load_clip_tokenizer(),
        scheduler=make_ddim_scheduler(configs["scheduler"]),
        vae=mods["vae"],
        model_id=f"{tag}-random-{size}px-seed{seed}",
        caption_template=DEFAULT_TEMPLATE,
        image_size=size,
        device=dev,
        dtype=dt,
    )
    return _prepare_modules(model)


def save_sd15_folder(
    folder: str | Path,
    seed: int = 0,
    width_divisor: int = 1,
    sample_size: int | None = None,
    device: str | torch.device | None = "cpu",
    configs: dict[str, dict] | None = None,
    tag: str | None = None,
) -> Path:
    """Write a random-weight SD 1.5 in the standard diffusers layout (model_index.json, unet/,
    vae/, text_encoder/, tokenizer/, scheduler/), loadable by load_diffusion_model and diffusers.

    Weights are saved in fp32 (as the hub's main branch), 4.3 GB at full size.
    """
    model = build_sd15_model(device, torch.float32, seed, width_divisor, sample_size, configs, tag)
    out = model.save(folder)
    (out / TINYSHOT_JSON).unlink()  # a hub SD folder has no such file; load it the same way
    return out
