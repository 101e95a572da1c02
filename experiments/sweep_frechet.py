"""Frechet distance of the plain-TI images a `ti_agreement_sweep.py` run saved, per setting.

Real side: the first 200 images per class of the sweep's query dataset (the novel pool on
train-split episodes); fake side: each episode's 50 images per class, grey-projected and
cropped to the real frame (crop_generator_frame), on the demo's EfficientNet-Lite0 features.
50 against 200 images makes the distance biased upwards: compare settings, not other tables.

    PYTHONPATH=src python experiments/sweep_frechet.py runs/ti-steps --guidance 3 \\
        --ddim-steps 4 5 6 8 10 --episodes 4
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from ti_agreement_sweep import images_dir

from tinyshot.data.episode_io import read_episodes
from tinyshot.data.transforms import crop_generator_frame, images_to_tensor, tensor_to_pil
from tinyshot.diffusion.config import DEMO_DDIM_STEPS
from tinyshot.diffusion.store import ImageStore
from tinyshot.evaluation.frechet import (
    EFFNET_METRIC,
    BackboneFeatures,
    extract_features,
    frechet_distance_features,
)
from tinyshot.models.backbones import build_backbone
from tinyshot.pipeline.benchmark.tasks import load_task_datasets
from tinyshot.pipeline.config import PipelineConfig, generator_prep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path, help="the OUT folder of ti_agreement_sweep.py")
    p.add_argument("--guidance", type=float, nargs="+", default=[3.0])
    p.add_argument("--ddim-steps", type=int, nargs="+", default=[DEMO_DDIM_STEPS])
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--ti", default="150:0.01", help="STEPS:LR of the TI run to read")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    eps, meta = read_episodes(a.sweep / "episodes.json")
    _, query_ds = load_task_datasets(meta)
    prep = generator_prep(PipelineConfig(generator="fashion-mnist-known"))
    ext = BackboneFeatures(build_backbone("efficientnet-lite0", input_size=96), EFFNET_METRIC)

    def features(images):
        return extract_features(ext, images, 50, "cpu")

    real = {
        n: features(query_ds.load_images(query_ds.indices_of(query_ds.class_id(n))[:200]))
        for n in eps[0].classes
    }
    steps, lr = a.ti.split(":")
    for g in a.guidance:
        for k in a.ddim_steps:
            fds = []
            for e in range(a.episodes):
                store = ImageStore(images_dir(a.sweep / str(e), int(steps), float(lr), g, k))
                for c, name in enumerate(eps[e].classes):
                    x = crop_generator_frame(images_to_tensor(store.load_images(c)), prep)
                    fake = features([tensor_to_pil(i) for i in x])
                    fds.append(frechet_distance_features(fake, real[name]))
            print(f"guidance {g:g}, {k} DDIM steps: FD {sum(fds) / len(fds):.1f} "
                  f"({len(fds)} episode-classes)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
