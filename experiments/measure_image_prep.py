"""Measure the generator's image preparation (issue 12 part 2): denoising error of the shipped
Fashion-MNIST generator on supports stretched 28->32 (the old path) vs zero-padded (its training
preparation), and the outer 2-px frame brightness of real vs generated images as the student sees
them. Usage: PYTHONPATH=src python experiments/measure_image_prep.py [--per-class 5] [--gen 20]"""

from __future__ import annotations

import argparse

import torch

from tinyshot.data.registry import load_dataset
from tinyshot.data.transforms import (
    crop_generator_frame,
    frame_brightness,
    images_to_tensor,
)
from tinyshot.diffusion.model import load_diffusion_model
from tinyshot.diffusion.pretrain import GENERIC_CAPTION, default_generator_path
from tinyshot.diffusion.upscale import prepare_for_generator
from tinyshot.utils.seed import torch_generator


@torch.no_grad()
def denoise_mse(model, x: torch.Tensor, caption: str, timesteps, reps: int, seed: int) -> float:
    z0 = model.encode(x)
    ctx = model.encode_text([caption]).expand(len(z0), -1, -1)
    ac = model.scheduler.alphas_cumprod
    errs = []
    g = torch_generator(seed)
    for _ in range(reps):
        for t in timesteps:
            n = torch.randn(z0.shape, generator=g)
            a = ac[t]
            zt = a.sqrt() * z0 + (1 - a).sqrt() * n
            errs.append(float(((model.eps(zt, torch.tensor(t), ctx) - n) ** 2).mean()))
    return sum(errs) / len(errs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=5)
    ap.add_argument("--gen", type=int, default=20, help="generated images per class (name prompt)")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument(
        "--clip",
        action="store_true",
        help="clip predicted x0 to [-1, 1] while sampling, as the generator's scheduler "
        "config asks (clip_sample: true; diffusers' DDIM step, issue 12 part 1)",
    )
    args = ap.parse_args()
    if args.clip:
        import tinyshot.diffusion.ddim as ddim

        def clipped_move(z, eps, a_from, a_to):
            a, ap_ = ddim._per_sample(a_from, z), ddim._per_sample(a_to, z)
            x0 = ((z - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            return ap_.sqrt() * x0 + (1 - ap_).sqrt() * eps

        ddim.ddim_move = clipped_move
    torch.set_num_threads(1)
    model = load_diffusion_model(default_generator_path("fashion-mnist"))
    prep = model.image_prep
    ds = load_dataset("fashion-mnist", "novel-train")
    pil = []
    for c in range(ds.num_classes):
        pil += ds.load_images(ds.indices_of(c)[: args.per_class])
    stretched = images_to_tensor(pil, 32)  # the old path: bicubic/bilinear stretch 28 -> 32
    from tinyshot.diffusion.upscale import prepare_images

    stretched = prepare_images(pil, 32, "auto")
    padded = prepare_for_generator(pil, prep)
    ts = [100, 300, 500, 700, 900]
    for name, x in (("stretched", stretched), ("padded", padded)) if not args.clip else ():
        mse = denoise_mse(model, x, GENERIC_CAPTION, ts, args.reps, 0)
        print(f"denoising MSE on {len(pil)} supports, {name:9s}: {mse:.4f}")
    # Frame brightness, as the student (32 px) sees real and generated images.
    from tinyshot.diffusion.ddim import ddim_sample, make_schedule

    sched = make_schedule(model, 10, None)
    names = [ds.class_names[c] for c in range(ds.num_classes)]
    cond = model.encode_text([f"a photo of a {n.lower()}" for n in names for _ in range(args.gen)])
    empty = model.empty_embedding()
    z = torch.randn((len(cond), *model.latent_shape), generator=torch_generator(1))
    with torch.inference_mode():
        x0 = ddim_sample(model, z, cond, lambda i, r: empty.expand(len(r), -1, -1), sched, 3.0)
        gen = (model.decode(x0) * 255).round().to(torch.uint8)
    from tinyshot.data.transforms import resize_uint8 as _resize_uint8

    real_student = (images_to_tensor(pil, 32) * 255).round().to(torch.uint8)
    print(
        f"frame (outer 2 px) real supports at 32 px (student view): {frame_brightness(real_student):.3f}"
    )
    print(f"frame generated, raw 32 px canvas (old student view):    {frame_brightness(gen):.3f}")
    cropped = _resize_uint8(crop_generator_frame(gen, prep), 32)
    print(
        f"frame generated, frame cropped then 32 px (new view):   {frame_brightness(cropped):.3f}"
    )
    print(
        f"frame real supports prepared for the generator (padded): {frame_brightness(padded):.3f}"
    )


if __name__ == "__main__":
    main()
