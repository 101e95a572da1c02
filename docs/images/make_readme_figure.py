"""Make docs/images/readme-support-vs-tint.png, the README's picture.

The demo's episode 0 (`tinyshot demo`, concept-known world, seed 0): per novel class, 2 of its
5 support images and the first 4 TINT images the demo generates from all 5 (the demo makes 50;
an image depends only on its class, index and seed, so these are the demo's first four), as
the teacher and the student see them (generator frame cropped, projected onto grey).
Specialization and generation use the demo's own settings and code
(tinyshot.pipeline.episode.specialize_and_generate): about 2 minutes on 2 idle CPU cores (19 min
on 2 cores under a load of about 10, 2026-12-06; the PNG is 32 KB).

    PYTHONPATH=src python docs/images/make_readme_figure.py [OUT.png] [--work DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from tinyshot.data.sampler import sample_episodes
from tinyshot.data.transforms import crop_generator_frame, images_to_tensor
from tinyshot.diffusion.store import ImageStore
from tinyshot.pipeline.demo import DemoConfig, demo_datasets
from tinyshot.pipeline.episode import (
    EpisodeData,
    PipelineConfig,
    generator_prep,
    specialize_and_generate,
)
from tinyshot.utils.seed import derive_seed

SUPPORTS, GENERATED, SCALE, PAD, GAP, LABEL_W, HEAD_H = 2, 4, 3, 4, 16, 110, 26
FONT = "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf"


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.truetype(FONT, size)
    except OSError:
        return ImageFont.load_default()


def figure(out: Path, work: Path) -> Path:
    demo = DemoConfig()  # the demo's defaults: concept-known world, 5-way 5-shot, seed 0
    world = demo.resolve_world()
    support_ds, query_ds, _ = demo_datasets(demo.world)
    episode = sample_episodes(
        support_ds, 1, demo.ways, demo.shots, demo.queries, demo.seed, query_ds=query_ds
    )[0]
    support_pil = [
        support_ds.load_images([support_ds.index_of(i) for i in ids]) for ids in episode.support
    ]
    config = PipelineConfig(methods=("tint",), generator=world.generator, synthetic_per_class=4)
    config.validate()
    data = EpisodeData(
        class_names=list(episode.classes),
        support_pil=support_pil,
        support=torch.empty(0, dtype=torch.uint8),
        support_labels=torch.empty(0, dtype=torch.long),
    )
    specialize_and_generate(data, config, work, derive_seed(demo.seed, "episode", 0))

    prep = generator_prep(config)
    store = ImageStore(work / "synthetic" / "tint")
    rows = []
    for c, name in enumerate(data.class_names):
        sup = images_to_tensor(support_pil[c][:SUPPORTS])
        gen = images_to_tensor(store.load_images(c, limit=GENERATED))
        gen = crop_generator_frame(gen, prep.at_side(gen.shape[-1]))
        rows.append((name, sup, gen))

    side = rows[0][1].shape[-1] * SCALE
    cols_w = (SUPPORTS + GENERATED) * (side + PAD) + GAP
    canvas = Image.new("RGB", (LABEL_W + cols_w + PAD, HEAD_H + len(rows) * (side + PAD)), "white")
    draw = ImageDraw.Draw(canvas)
    f = font(15)
    x_gen = LABEL_W + SUPPORTS * (side + PAD) + GAP
    draw.text((LABEL_W, 4), "support (real)", fill="black", font=f)
    draw.text((x_gen, 4), "TINT generated (alpha = 1)", fill="black", font=f)
    for r, (name, sup, gen) in enumerate(rows):
        y = HEAD_H + r * (side + PAD)
        draw.text((6, y + side // 2 - 9), name, fill="black", font=f)
        for j, img in enumerate([*sup, *gen]):
            x = LABEL_W + j * (side + PAD) + (GAP if j >= SUPPORTS else 0)
            arr = (img.clamp(0, 1) * 255).round().to(torch.uint8)
            tile = Image.fromarray(arr.permute(1, 2, 0).numpy()).resize((side, side), Image.NEAREST)
            canvas.paste(tile, (x, y))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.convert("L").save(out, optimize=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent
    p.add_argument("out", nargs="?", type=Path, default=here / "readme-support-vs-tint.png")
    p.add_argument("--work", type=Path, default=None, help="keep the episode folder here")
    args = p.parse_args()
    if args.work is not None:
        print(figure(args.out, args.work))
        return
    with tempfile.TemporaryDirectory() as tmp:
        print(figure(args.out, Path(tmp)))


if __name__ == "__main__":
    main()
