"""CLI sub-commands for this stage (registered by tinyshot.cli): specialize, generate, and
`tinyshot bench generate`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's sub-commands to the `tinyshot` parser."""
    from tinyshot.diffusion.config import METHODS, SpecializeConfig

    d = SpecializeConfig()
    p = sub.add_parser(
        "specialize",
        help="textual + null-text inversion of a diffusion model on a class-per-folder set",
        description="TI for all classes jointly, then DDIM + null-text inversion of every "
        "image. Writes OUT/<class>.safetensors + OUT/<class>.json per class and OUT/log.txt. "
        "Kill it any time; rerunning the same command resumes. See docs/generator.md.",
    )
    p.add_argument("data_dir", help="folder with one sub-folder of images per class")
    p.add_argument("--model", required=True, help="diffusers model folder or hub id")
    p.add_argument("--out", required=True, help="artifact folder")
    p.add_argument("--config", default=None, help="JSON file with SpecializeConfig fields")
    p.add_argument("--ti-steps", type=int, default=None, help=f"TI steps (default {d.ti_steps})")
    p.add_argument(
        "--ti-lr", type=float, default=None, help=f"TI learning rate (default {d.ti_lr})"
    )
    p.add_argument("--steps", type=int, default=None,
                   help=f"DDIM steps (default {d.num_inference_steps})")  # fmt: skip
    p.add_argument("--inversion", choices=["nti", "npi"], default=None,
                   help="nti: null-text inversion (default); npi: negative-prompt inversion")  # fmt: skip
    p.add_argument("--nti-inner-steps", type=int, default=None)
    p.add_argument("--nti-lr", type=float, default=None)
    p.add_argument("--guidance", type=float, default=None, help=f"CFG scale (default {d.guidance})")
    p.add_argument("--upscale", choices=["auto", "sr", "bilinear"], default=None)
    p.add_argument("--seed", type=int, default=None)
    _device_args(p)
    p.set_defaults(func=_specialize)

    _register_specialize_lora(sub)
    g = sub.add_parser(
        "generate",
        help="synthetic images from specialization artifacts (TINT, plain TI, DA-Fusion) or "
        "from a LoRA-adapted generator (lora, lora-dafusion, lora-tint)",
        description="Writes OUT/images/<class>/<index>.png and OUT/manifest.jsonl; rerun the "
        "same command to resume an interrupted run (the result is identical).",
    )
    g.add_argument(
        "--artifacts",
        required=True,
        help="folder written by `tinyshot specialize` (or by `specialize-lora` for lora*)",
    )
    g.add_argument("--model", required=True, help="the model used for specialization")
    g.add_argument(
        "--method",
        choices=list(METHODS),
        default="tint",
        help="specialization x sampling (docs/generator.md): tint, ti, dafusion (TI); name "
        "(none); lora, lora-dafusion, lora-tint (LoRA; lora-tint needs specialize-lora --invert)",
    )
    g.add_argument("--per-class", type=int, required=True, help="images per class")
    g.add_argument("--out", required=True)
    g.add_argument("--alpha", type=float, default=1.0, help="TINT noise blend in [0,1] (default 1)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--guidance", type=float, default=None, help="default: the artifacts'")
    g.add_argument("--steps", type=int, default=None, help="default: the artifacts'")
    _device_args(g)
    g.set_defaults(func=_generate)


def _register_specialize_lora(sub: argparse._SubParsersAction) -> None:
    from tinyshot.diffusion.lora import LoraTrainConfig

    d = LoraTrainConfig()
    p = sub.add_parser(
        "specialize-lora",
        help="LoRA fine-tuning of a diffusion model on a class-per-folder set (DataDream)",
        description="LoRA on the UNet's attention (optionally also its ResNet convolutions and the "
        "text encoder's attention) with one "
        "learned token per class (or the class names), all classes jointly; writes "
        "OUT/pytorch_lora_weights.safetensors (diffusers' format: "
        "StableDiffusionPipeline.load_lora_weights(OUT) loads it) and the tokens. --invert adds "
        "DDIM + null-text inversion of every image through the adapted model (for lora-tint). "
        "Kill it any time; rerunning the same command resumes. See docs/generator.md.",
    )
    p.add_argument("data_dir", help="folder with one sub-folder of images per class")
    p.add_argument("--model", required=True, help="diffusers model folder or hub id")
    p.add_argument("--out", required=True, help="LoRA folder")
    p.add_argument("--config", default=None, help="JSON file with LoraTrainConfig fields")
    p.add_argument("--sampling-config", default=None,
                   help="JSON file with SpecializeConfig fields: DDIM steps, guidance and the "
                   "inversion settings (default: the paper's)")  # fmt: skip
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {d.steps})")
    p.add_argument("--lr", type=float, default=None, help=f"learning rate (default {d.lr})")
    p.add_argument("--rank", type=int, default=None, help=f"LoRA rank (default {d.rank})")
    p.add_argument("--text-encoder", action="store_true", default=None,
                   help="LoRA on the text encoder's attention too")  # fmt: skip
    p.add_argument("--unet-convs", action="store_true", default=None,
                   help="LoRA on the UNet's ResNet convolutions too (where it draws shapes)")  # fmt: skip
    p.add_argument("--prompt", choices=["token", "name"], default=None,
                   help="a learned token per class (default) or the class (folder) name")  # fmt: skip
    p.add_argument("--invert", action="store_true", help="null-text inversion (lora-tint)")
    p.add_argument("--seed", type=int, default=None)
    _device_args(p)
    p.set_defaults(func=_specialize_lora)


def register_bench(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser(
        "generate",
        help="seconds per image for TI, NTI and generation; batched vs one-at-a-time",
        description="Times TI, NTI and generation and prints them beside the paper's Table 6 "
        "(SD 1.5 on an A40: 1.01 s per image all-in). --arch sd15 builds SD 1.5's UNet, VAE "
        "and CLIP text encoder from their published configs with random weights (no download; "
        "the same cost as the real model) and runs at 512 px in fp16 and bf16 on CUDA. "
        "See docs/generator.md.",
    )
    p.add_argument("--model", default=None, help="model folder (default: --arch)")
    p.add_argument(
        "--arch",
        choices=["tiny", "sd15"],
        default="tiny",
        help="random-weight model to time when no --model: tiny (default, CPU-sized) or sd15 "
        "(full-size Stable Diffusion 1.5, 512 px; meant for a GPU)",
    )
    p.add_argument("--pixel-space", action="store_true", help="tiny model without VAE")
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--shots", type=int, default=3)
    p.add_argument("--ti-steps", type=int, default=20)
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (20; sd15: 50)")
    p.add_argument("--nti-inner-steps", type=int, default=10)
    p.add_argument("--lora-steps", type=int, default=5,
                   help="LoRA training steps timed (rank 16, batch 8; 0 = none)")  # fmt: skip
    p.add_argument("--images", type=int, default=None,
                   help="images generated batched (64; sd15: two batches)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=None,
                   help="generation batch (32; sd15: the largest that fits half the free GPU "
                   "memory, at most 32)")  # fmt: skip
    p.add_argument("--reference-images", type=int, default=None,
                   help="images made one at a time in fp32 (8; sd15: 2)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--json-out", default=None, help="also write the JSON result to this file")
    p.add_argument("--width-divisor", type=int, default=1, help=argparse.SUPPRESS)  # CPU tests
    p.add_argument("--latent-size", type=int, default=None, help=argparse.SUPPRESS)  # CPU tests
    p.add_argument("--upscale", choices=["bilinear", "sr"], default="bilinear",
                   help="how support images reach the model size (sd15 draws them at 84 px)")  # fmt: skip
    _device_args(p)
    p.set_defaults(func=_bench)


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="fp32, fp16, bf16 (default: fp16 on GPU)")


def config_from(cls, path: str | None, flags: dict):
    """cls (a config dataclass) from a JSON file's fields, with the flags given on top."""
    from tinyshot.utils.io import read_json

    base = read_json(path) if path else {}
    base.update({k: v for k, v in flags.items() if v is not None})
    return cls.from_dict(base).validate()


def _specialize(args: argparse.Namespace) -> int:
    from tinyshot.diffusion.config import SpecializeConfig
    from tinyshot.diffusion.model import load_diffusion_model
    from tinyshot.diffusion.specialize import specialize
    from tinyshot.utils.logging import setup_logging

    flags = {
        "ti_steps": args.ti_steps,
        "ti_lr": args.ti_lr,
        "num_inference_steps": args.steps,
        "inversion": args.inversion,
        "nti_inner_steps": args.nti_inner_steps,
        "nti_lr": args.nti_lr,
        "guidance": args.guidance,
        "upscale": args.upscale,
        "seed": args.seed,
    }
    cfg = config_from(SpecializeConfig, args.config, flags)
    images, names = read_class_folders(args.data_dir)
    setup_logging(args.out)
    model = load_diffusion_model(args.model, args.device, args.dtype)
    arts = specialize(model, images, names, cfg, args.out)
    for a in arts:
        s = a.meta.get("stats", {})
        print(
            f"{a.class_index} {a.class_name}: {a.num_support} images, TI loss "
            f"{s.get('ti_loss_init', float('nan')):.4f} -> {s.get('ti_loss_final', float('nan')):.4f}"
        )
    print(f"artifacts: {args.out}")
    return 0


def _specialize_lora(args: argparse.Namespace) -> int:
    from tinyshot.diffusion.config import SpecializeConfig
    from tinyshot.diffusion.lora import LoraTrainConfig, specialize_lora
    from tinyshot.diffusion.model import load_diffusion_model
    from tinyshot.utils.logging import setup_logging

    flags = {
        "steps": args.steps,
        "lr": args.lr,
        "rank": args.rank,
        "text_encoder": args.text_encoder,
        "unet_convs": args.unet_convs,
        "prompt": args.prompt,
        "seed": args.seed,
    }
    cfg = config_from(LoraTrainConfig, args.config, flags)
    sampling = config_from(SpecializeConfig, args.sampling_config, {})
    images, names = read_class_folders(args.data_dir)
    setup_logging(args.out)
    model = load_diffusion_model(args.model, args.device, args.dtype)
    res = specialize_lora(model, images, names, cfg, args.out, sampling, invert=args.invert)
    s = res.meta["stats"]
    for c, name in enumerate(res.class_names):
        print(
            f"{c} {name}: prompt {res.prompts[c]!r}, support loss "
            f"{s['support_loss_init'][c]:.4f} -> {s['support_loss_final'][c]:.4f}"
        )
    print(f"LoRA: {args.out} ({res.meta['parameters']:,} parameters)")
    return 0


def read_class_folders(data_dir: str | Path) -> tuple[list[list], list[str]]:
    """Images grouped by class from a class-per-folder tree (all images of each class)."""
    from tinyshot.data.imagefolder import load_imagefolder

    ds = load_imagefolder(data_dir)
    groups = [[ds.load_image(int(i)) for i in ds.indices_of(c)] for c in range(ds.num_classes)]
    return groups, list(ds.class_names)


def _generate(args: argparse.Namespace) -> int:
    from tinyshot.diffusion.artifacts import load_artifacts
    from tinyshot.diffusion.generate import LORA_METHODS, generate
    from tinyshot.diffusion.lora import LoraSpecialization
    from tinyshot.diffusion.model import load_diffusion_model
    from tinyshot.errors import ConfigError
    from tinyshot.utils.logging import setup_logging

    if not 0.0 <= args.alpha <= 1.0:
        raise ConfigError(f"--alpha must be in [0, 1], got {args.alpha}")
    kw = dict(
        alpha=args.alpha,
        batch_size=args.batch_size,
        seed=args.seed,
        guidance=args.guidance,
        steps=args.steps,
    )
    # a wrong folder fails before the model loads
    if args.method in LORA_METHODS:
        arts = LoraSpecialization.load(args.artifacts)
    else:
        arts = load_artifacts(args.artifacts)
    setup_logging(args.out)
    model = load_diffusion_model(args.model, args.device, args.dtype)
    store = generate(model, arts, args.method, args.per_class, args.out, **kw)
    print(f"{len(store)} images in {args.out} (manifest.jsonl)")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    from tinyshot.diffusion.bench import run_generation_bench
    from tinyshot.diffusion.model import build_tiny_diffusion_model, load_diffusion_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.arch == "sd15" and not args.model:
        return _bench_sd15(args)
    for name, default in (("steps", 20), ("images", 64), ("batch_size", 32),
                          ("reference_images", 8)):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.model:
        model = load_diffusion_model(args.model, args.device, args.dtype)
    else:
        model = build_tiny_diffusion_model(
            pixel_space=args.pixel_space, device=args.device or "cpu", dtype=args.dtype
        )
    res = run_generation_bench(
        model,
        classes=args.classes,
        shots=args.shots,
        ti_steps=args.ti_steps,
        steps=args.steps,
        nti_inner_steps=args.nti_inner_steps,
        images=args.images,
        batch_size=args.batch_size,
        reference_images=args.reference_images,
        lora_steps=args.lora_steps,
    )
    if args.json_out:
        from tinyshot.utils.io import write_json

        write_json(args.json_out, {"rows": res.rows, "info": res.info})
    if args.json:
        print(json.dumps({"rows": res.rows, "info": res.info}, indent=2))
    else:
        print(res.table())
    return 0


def _bench_sd15(args: argparse.Namespace) -> int:
    """Full-size SD 1.5 (random weights) in each dtype; one table per dtype, then a summary."""
    from tinyshot.diffusion.bench import run_sd15_bench
    from tinyshot.errors import ConfigError
    from tinyshot.utils.device import resolve_device
    from tinyshot.utils.io import write_json

    if resolve_device(args.device).type == "cpu" and args.width_divisor == 1:
        raise ConfigError(
            "--arch sd15 is the full-size model at 512 px: on a CPU one guided UNet step takes "
            "minutes (255 s measured on one core), the bench hours. Run it with --device cuda "
            "(or scripts/gpu-check.sh)"
        )

    out = run_sd15_bench(
        device=args.device,
        dtypes=[args.dtype] if args.dtype else None,
        width_divisor=args.width_divisor,
        sample_size=args.latent_size,
        classes=args.classes,
        shots=args.shots,
        ti_steps=args.ti_steps,
        steps=args.steps or 50,
        nti_inner_steps=args.nti_inner_steps,
        images=args.images,
        batch_size=args.batch_size,
        reference_images=args.reference_images or 2,
        upscale=args.upscale,
        support_size=84,
        lora_steps=args.lora_steps,
    )
    if args.json_out:
        write_json(args.json_out, out)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    p = out["params"]
    print(
        f"{out['arch']} random weights on {out['device']} ({out['gpu_name'] or 'CPU'}), torch "
        f"{out['torch']}: UNet {p['unet'] / 1e6:.1f}M, VAE {p['vae'] / 1e6:.1f}M, text "
        f"encoder {p['text_encoder'] / 1e6:.1f}M parameters"
    )
    for dt, res in out["results"].items():
        print(f"\n== {dt} (model built in {res['info']['build_s']:.1f} s) ==")
        print(res["table"])
    for dt, why in out["skipped"].items():
        print(f"\n{dt} skipped: {why}")
    print("\nall-in seconds per image (TI + NTI amortised over 4000 images per class + batched "
          "generation); paper Table 6: 1.01 s on an A40")  # fmt: skip
    for dt, res in out["results"].items():
        i = res["info"]
        print(f"  {dt}: {i['all_in_per_image_s']:.3f} s (one image at a time in fp32: "
              f"{i['all_in_one_at_a_time_per_image_s']:.3f} s; batched is {i['speedup']:.1f}x)")  # fmt: skip
    return 0
