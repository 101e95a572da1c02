"""NTI learning rate against reconstruction gain and the class fidelity of TINT's images.

On the demo's episode 0 of the concept-known world: TI once (shared by every lr), then NTI at
each lr, 50 TINT images per class at alpha = 1 (and 50 plain-TI images once), each set labelled
by the Fashion-MNIST judge (evaluation.fidelity). Prints one JSON line per (lr, method):
judged fidelity per class, NTI PSNR and gain over plain CFG per class, and the null drift
|u_t - u_empty| / |u_empty| (mean over timesteps and images). docs/generator.md has the table.

    PYTHONPATH=src python experiments/nti_fidelity_sweep.py \\
        src/tinyshot/assets/generators/fashion-mnist-known runs/nti-sweep 1.0 0.3 0.1

STEPS=6 samples (and inverts) at 6 DDIM steps instead of the demo's count.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch

from tinyshot.data.transforms import crop_generator_frame
from tinyshot.diffusion.config import SpecializeConfig
from tinyshot.diffusion.generate import generate
from tinyshot.diffusion.model import load_diffusion_model, read_image_prep
from tinyshot.diffusion.specialize import specialize
from tinyshot.evaluation.fidelity import judged_share, load_judge
from tinyshot.pipeline.config import PipelineConfig
from tinyshot.pipeline.demo import DemoConfig, demo_datasets, demo_episodes
from tinyshot.pipeline.episode_data import load_episode_data
from tinyshot.utils.logging import setup_logging
from tinyshot.utils.seed import derive_seed


def main(gen_dir: str, out: Path, lrs: list[float]) -> list[dict]:
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    cfg = DemoConfig()
    cfg.resolve_world()
    support_ds, query_ds, _ = demo_datasets("known")
    episode = demo_episodes(cfg, out, support_ds, query_ds)[0]
    pipe = PipelineConfig(methods=("ti", "tint"), generator=gen_dir)
    data = load_episode_data(episode, support_ds, query_ds, None, pipe, 0)
    judge, jinfo = load_judge()
    prep = read_image_prep(gen_dir)
    seed = derive_seed(derive_seed(cfg.seed, "episode", 0), "spec") % 2**31
    rows, tokens = [], None
    for i, lr in enumerate(lrs):
        model = load_diffusion_model(gen_dir, device="cpu")
        steps = int(os.environ.get("STEPS", pipe.specialize["num_inference_steps"]))
        spec = SpecializeConfig.from_dict(
            {**pipe.specialize, "nti_lr": lr, "seed": seed, "num_inference_steps": steps}
        )
        d = out / f"lr{lr:g}"
        if tokens is not None and not (d / "spec" / "tokens.safetensors").exists():
            (d / "spec").mkdir(parents=True, exist_ok=True)
            shutil.copy(tokens, d / "spec" / "tokens.safetensors")  # the same TI for every lr
        arts = specialize(model, data.support_pil, data.class_names, spec, d / "spec")
        tokens = tokens or d / "spec" / "tokens.safetensors"
        u0 = model.empty_embedding().float().cpu().reshape(model.max_length, -1)
        drift = [
            float(((a.null_embeddings - u0).flatten(2).norm(dim=2) / u0.norm()).mean())
            for a in arts
        ]
        for method in ["tint"] + (["ti"] if i == 0 else []):
            store = generate(model, arts, method=method, n_per_class=50, out_dir=d / method,
                             alpha=1.0, batch_size=100, seed=123)  # fmt: skip
            share = judged_share(judge, jinfo["class_names"], {
                name: crop_generator_frame(store.load_tensor(c)[0], prep)
                for c, name in enumerate(data.class_names)
            })  # fmt: skip
            row = {
                "nti_lr": lr,
                "ddim_steps": steps,
                "method": method,
                "judged_mean": share["mean"],
                "judged_per_class": share["per_class"],
                "null_drift": drift,
                "nti_psnr_db": [a.meta["stats"]["nti_psnr_db"] for a in arts],
                "nti_gain_db": [a.meta["stats"]["nti_gain_db"] for a in arts],
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    (out / "sweep.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), [float(x) for x in sys.argv[3:]])
