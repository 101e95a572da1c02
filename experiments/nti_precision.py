"""NTI reconstruction in fp32 vs fp16/bf16 UNets, and where fp16 gradients underflow.

The tiny test models (latent and pixel space), trained briefly as denoisers on the synthetic
episode as the tests' fixture does, then run NTI at the demo's shape (10 DDIM steps x 10
inner steps, lr 0.1, guidance 7.5) with their UNet (and VAE) in each dtype; the text encoder
stays fp32, as loading does. Prints JSON lines: PSNR of NTI's guided reconstruction and of
plain CFG from the same z_T against the decoded support, inner steps, fp16 skips, seconds.

--grads: the NTI null-embedding gradient of one inner step near the early stop (loss ~1e-5
per image) on an SD-shaped model at reduced width (4x64x64 latents, as SD's), from an fp16
UNet at loss scales 1, 2^10 and 2^16, against the fp32 UNet's gradient.

Runs with whatever tinyshot is on PYTHONPATH (the older LossScaler too, for a before/after).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "diffusion"))

from tinyshot.data.transforms import images_to_tensor
from tinyshot.diffusion.bench import synthetic_episode
from tinyshot.diffusion.ddim import cfg_eps, ddim_invert, ddim_move, make_schedule
from tinyshot.diffusion.inversion import measure_reconstruction, null_text_inversion
from tinyshot.diffusion.model import build_sd15_model, build_tiny_diffusion_model

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _cast(model, dtype):
    model.unet.to(dtype=dtype)
    if model.vae is not None:
        model.vae.to(dtype=dtype)
    model.dtype = dtype
    model._empty = None
    return model


def reconstruction(pixel: bool, dtypes: list[str], steps: int, inner: int) -> None:
    from conftest import train_denoiser

    images, names = synthetic_episode(2, 2, size=32, seed=0)
    flat = [im for cls in images for im in cls]
    labels = [c for c, cls in enumerate(images) for _ in cls]
    base = train_denoiser(build_tiny_diffusion_model(pixel_space=pixel), flat, labels, names)
    state = {k: v.clone() for k, v in base.unet.state_dict().items()}
    for name in dtypes:
        base.unet.load_state_dict(state)
        m = _cast(base, DTYPES[name])
        z0 = m.encode(images_to_tensor(flat))
        cond = m.encode_text([f"a photo of a {names[c]}" for c in labels])
        sched = make_schedule(m, steps)
        t0 = time.perf_counter()
        r = null_text_inversion(
            m, z0, cond, sched, guidance=7.5, inner_steps=inner, lr=0.1, show_progress=False
        )
        secs = time.perf_counter() - t0
        r = measure_reconstruction(m, z0, cond, sched, 7.5, r)
        row = {
            "model": "pixel" if pixel else "latent",
            "dtype": name,
            "nti_psnr": [round(float(v), 2) for v in r.psnr_db],
            "cfg_psnr": [round(float(v), 2) for v in r.cfg_psnr_db],
            "nti_psnr_mean": round(float(r.psnr_db.mean()), 2),
            "cfg_psnr_mean": round(float(r.cfg_psnr_db.mean()), 2),
            "inner_steps": r.inner_steps.tolist(),
            "seconds": round(secs, 1),
        }
        print(json.dumps(row), flush=True)
        _cast(base, torch.float32)


def grads(width_divisor: int, sample_size: int) -> None:
    """u.grad at one NTI inner step with the loss held near the early stop."""
    from tinyshot.diffusion.textual_inversion import LossScaler

    m = build_sd15_model(width_divisor=width_divisor, sample_size=sample_size, dtype="fp32")
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, *m.latent_shape, generator=g)
    cond = m.encode_text(["a photo of a dog", "a photo of a cat"])
    sched = make_schedule(m, 10)
    i = 5
    with torch.no_grad():
        x = ddim_invert(m, z0, cond, sched)[sched.steps - i]
        u0 = m.empty_embedding().expand(2, -1, -1).clone()
        pred0 = ddim_move(
            x,
            cfg_eps(m, x, sched.timesteps[i], u0, cond, 7.5),
            sched.alpha[i],
            sched.alpha_prev[i],
            sched.rule.unbounded(),
        )
        target = pred0 + 1e-5**0.5 * torch.randn(pred0.shape, generator=g)  # loss ~1e-5
    state = {k: v.clone() for k, v in m.unet.state_dict().items()}

    def grad(dtype, scale):
        m.unet.load_state_dict(state)
        _cast(m, dtype)
        u = u0.clone().requires_grad_(True)
        opt = torch.optim.SGD([u], lr=0.0)
        e_c = m.eps(x, sched.timesteps[i], cond).detach()
        e_u = m.eps(x, sched.timesteps[i], u)
        pred = ddim_move(
            x, e_u + 7.5 * (e_c - e_u), sched.alpha[i], sched.alpha_prev[i], sched.rule.unbounded()
        )
        per = ((pred - target) ** 2).flatten(1).mean(1)
        s = LossScaler(scale=scale)
        if hasattr(s, "grad_scaler"):
            s.backward(per.sum(), opt)
            gr = u.grad.clone()
        else:  # the older scaler: scaled gradients
            s.backward(per.sum(), [u], opt)
            gr = u.grad.clone() / scale
        return gr, float(per.mean())

    ref, loss = grad(torch.float32, 1.0)
    for scale in (1.0, 2.0**10, 2.0**16):
        g16, _ = grad(torch.float16, scale)
        rel = float((g16 - ref).norm() / ref.norm())
        zeros = float((g16 == 0).float().mean())
        print(
            json.dumps(
                {
                    "grads": f"sd15-w{width_divisor}-{sample_size}",
                    "loss": loss,
                    "scale": scale,
                    "rel_err_vs_fp32": round(rel, 4),
                    "zero_frac": round(zeros, 4),
                    "ref_abs_median": float(ref.abs().median()),
                }
            ),
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtypes", default="fp32,fp16,bf16")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--inner", type=int, default=10)
    ap.add_argument("--grads", action="store_true")
    ap.add_argument("--width-divisor", type=int, default=8)
    ap.add_argument("--sample-size", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(4)
    if a.grads:
        grads(a.width_divisor, a.sample_size)
        return
    for pixel in (False, True):
        reconstruction(pixel, a.dtypes.split(","), a.steps, a.inner)


if __name__ == "__main__":
    main()
