"""LoRA against plain TI in the concept-unknown world (issue 32): teacher agreement and judged
fidelity of their images on one train-split episode, at a few LoRA settings (steps x lr).

The concept-unknown generator (`fashion-mnist`) never learned the novel classes, so TI (one
word in a text space without them) draws them at chance. LoRA adapts the generator itself
(DataDream). One tuning episode (supports from novel-train, seed 1000: never the test split),
TI at the demo's settings (150 steps, lr 1e-2) and LoRA (rank 16, one learned token per class,
every support in each step) at each STEPS:LR; 50 images per class from fresh noise with the
pipeline's generation seed (the same noise for every method), labelled by the episode's
teacher (the pipeline's, supports set) and by the shipped judge (10-way, chance 10%). Also the
memorisation figures of evaluation.health: the share of images whose nearest support (teacher
features) is closer than 0.25x the supports' own spread, and the mean nearest-support
distance over that spread.

    PYTHONPATH=src python experiments/lora_probe.py runs/lora-probe \\
        --lora 400:1e-4 400:1e-3 1000:1e-3 --json results/lora-probe.json

Resumable per setting (OUT/<setting>/); prints one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from tinyshot.data.transforms import crop_generator_frame
from tinyshot.diffusion.config import SpecializeConfig
from tinyshot.diffusion.generate import generate
from tinyshot.diffusion.lora import LoraTrainConfig, specialize_lora
from tinyshot.diffusion.model import load_diffusion_model
from tinyshot.diffusion.specialize import specialize
from tinyshot.evaluation.fidelity import judged_share, load_judge
from tinyshot.evaluation.health import MEMORISATION_RATIO, intended_labels, near_copy_share
from tinyshot.evaluation.health_figures import nearest_support_distances, teacher_features
from tinyshot.pipeline.benchmark import prepare_episodes
from tinyshot.pipeline.benchmark.tasks import load_task_datasets
from tinyshot.pipeline.config import generator_prep, resolve_generator
from tinyshot.pipeline.episode_data import load_episode_data
from tinyshot.pipeline.student_stage import pretrained_student_path
from tinyshot.pipeline.synthetic import teacher_synthetic
from tinyshot.pipeline.task_config import base_dataset, task_pipeline_config
from tinyshot.pipeline.teacher_stage import build_episode_teacher
from tinyshot.utils.io import read_json, write_json
from tinyshot.utils.logging import setup_logging
from tinyshot.utils.seed import derive_seed

PER_CLASS = 50


def memorisation(seen, intended, data, teacher) -> dict:
    """Near-copy share and nearest-support distance over the spread, per class (health's)."""
    with torch.no_grad():
        feats = teacher_features(teacher, seen)
        sup = data.teacher_support if data.teacher_support is not None else data.support
        sup_f = teacher_features(teacher, sup)
    dists = nearest_support_distances(feats, intended, sup_f, data.support_labels, data.ways)
    return {
        "near_copies_per_class": [near_copy_share(d, s) for d, s in dists],
        "distance_over_spread_per_class": [float(d.mean()) / s for d, s in dists],
        "distance_over_spread_min_per_class": [float(d.min()) / s for d, s in dists],
    }


def real_calibration(episode, support_ds, data, teacher, per_class: int = 50) -> dict:
    """The memorisation figures of real images: `per_class` other novel-train images of each
    class (not supports) should be far from copies; the supports themselves are copies."""
    from tinyshot.data.transforms import teacher_view

    size = teacher.input_size
    taken = set(s for ids in episode.support for s in ids)
    imgs, labels = [], []
    for c, name in enumerate(episode.classes):
        idx = [i for i in support_ds.indices_of(support_ds.class_names.index(name))
               if support_ds.item_id(int(i)) not in taken][:per_class]  # fmt: skip
        imgs += support_ds.load_images(idx)
        labels += [c] * len(idx)
    real = memorisation(teacher_view(imgs, size), torch.tensor(labels), data, teacher)
    sup = data.teacher_support if data.teacher_support is not None else data.support
    copies = memorisation(sup, data.support_labels, data, teacher)
    return {"setting": "real-images", "other_real_images": real, "the_supports_again": copies}


def measure(store, data, teacher, judge, jinfo, prep) -> dict:
    """Teacher agreement, judged fidelity and memorisation figures of one store."""
    raw, _ = store.load_tensor()
    intended = intended_labels(store)
    with torch.no_grad():
        seen = teacher_synthetic(raw, prep, teacher.input_size)
        hit = teacher.predict_proba(seen.float() / 255.0).argmax(1) == intended
    share = judged_share(judge, jinfo["class_names"], {
        name: crop_generator_frame(store.load_tensor(c)[0], prep)
        for c, name in enumerate(data.class_names)
    })  # fmt: skip
    return {
        "agreement": float(hit.float().mean()),
        "agreement_per_class": {
            n: float(hit[intended == c].float().mean()) for c, n in enumerate(data.class_names)
        },
        "judged_mean": share["mean"],
        "judged_per_class": share["per_class"],
        **memorisation(seen, intended, data, teacher),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--lora", nargs="+", default=["400:1e-4", "400:1e-3", "1000:1e-3"])
    p.add_argument("--episode", type=int, default=0, help="which tuning episode (seed 1000)")
    p.add_argument(
        "--option", action="append", default=[], metavar="KEY=JSON",
        help="another LoraTrainConfig value for every --lora setting (e.g. unet_convs=true); "
        "named in the setting",
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument(
        "--extra-guidance", type=float, nargs="*", default=[],
        help="also sample every setting at these guidances (DataDream samples at 2.0)",
    )  # fmt: skip
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    a.out.mkdir(parents=True, exist_ok=True)
    setup_logging(a.out)
    from tinyshot.data.episode_io import read_episodes

    path = prepare_episodes(
        a.out / "episodes.json", "fashion-mnist", a.episode + 1, split="novel-train",
        query_split="novel-train", queries=1, seed=1000,
    )  # fmt: skip
    eps, meta = read_episodes(path)
    episode = eps[a.episode]
    ds = meta["dataset"]
    config = task_pipeline_config({"ti": {}}, ds["name"], ds["split"])
    support_ds, query_ds = load_task_datasets(meta)
    base_ds = base_dataset(meta)
    ep_seed = derive_seed(1000, "benchmark", a.episode)
    data = load_episode_data(episode, support_ds, query_ds, base_ds, config, ep_seed)
    teacher = build_episode_teacher(data, config, pretrained_student_path(base_ds, config))
    judge, jinfo = load_judge()
    prep = generator_prep(config)
    model = load_diffusion_model(resolve_generator(config.generator), device="cpu")
    spec = SpecializeConfig.from_dict(
        {**config.specialize, "nti_inner_steps": 0, "seed": derive_seed(ep_seed, "spec") % 2**31}
    )
    gen = dict(n_per_class=PER_CLASS, batch_size=100, seed=derive_seed(ep_seed, "generate") % 2**31)
    rows_path = a.out / "rows.json"
    rows: list[dict] = read_json(rows_path) if rows_path.is_file() else []
    done = {r["setting"] for r in rows}

    def record(row: dict) -> None:
        print(json.dumps(row), flush=True)
        rows.append(row)
        write_json(rows_path, rows)

    if "ti" not in done:
        t0 = time.perf_counter()
        arts = specialize(model, data.support_pil, data.class_names, spec, a.out / "ti" / "spec")
        store = generate(model, arts, "ti", out_dir=a.out / "ti" / "images", **gen)
        row = {"setting": "ti", "method": "ti", "ti_steps": spec.ti_steps, "ti_lr": spec.ti_lr}
        record({**row, **measure(store, data, teacher, judge, jinfo, prep),
                "seconds": time.perf_counter() - t0})  # fmt: skip
    for s in a.lora:
        steps, lr = int(s.split(":")[0]), float(s.split(":")[1])
        extra = {k: json.loads(v) for k, v in (o.split("=", 1) for o in a.option)}
        name = f"lora{steps}-lr{lr:g}" + "".join(f"-{k}={v}" for k, v in extra.items())
        if name in done:
            continue
        cfg = LoraTrainConfig.from_dict(
            {
                **config.lora,
                **extra,
                "steps": steps,
                "lr": lr,
                "seed": derive_seed(ep_seed, "lora") % 2**31,
            }
        )
        t0 = time.perf_counter()
        folder = a.out / name / "lora"
        res = specialize_lora(model, data.support_pil, data.class_names, cfg, folder, spec)
        train_s = time.perf_counter() - t0
        store = generate(model, folder, "lora", out_dir=a.out / name / "images", **gen)
        record({
            "setting": name, "method": "lora", "config": cfg.to_dict(),
            **measure(store, data, teacher, judge, jinfo, prep),
            "support_loss": [
                sum(res.meta["stats"][k]) / data.ways
                for k in ("support_loss_init", "support_loss_final")
            ],
            "train_s": train_s, "seconds": time.perf_counter() - t0,
        })  # fmt: skip
    for g in a.extra_guidance:  # the same specializations, sampled at another guidance
        for r in [r for r in rows if r.get("method") in ("ti", "lora") and "guidance" not in r]:
            name = f"{r['setting']}-g{g:g}"
            if name in done:
                continue
            t0 = time.perf_counter()
            images = a.out / r["setting"] / f"images-g{g:g}"
            if r["method"] == "ti":
                arts = specialize(
                    model, data.support_pil, data.class_names, spec, a.out / "ti" / "spec"
                )
                store = generate(model, arts, "ti", out_dir=images, guidance=g, **gen)
            else:
                folder = a.out / r["setting"] / "lora"
                store = generate(model, folder, "lora", out_dir=images, guidance=g, **gen)
            record({
                "setting": name, "method": r["method"], "guidance": g,
                **measure(store, data, teacher, judge, jinfo, prep),
                "seconds": time.perf_counter() - t0,
            })  # fmt: skip
    if "real-images" not in done:
        record(real_calibration(episode, support_ds, data, teacher))
    out = {
        "format": "tinyshot.lora-probe",
        "world": "unknown",
        "generator": config.generator,
        "episode": {"split": "novel-train", "seed": 1000, "index": a.episode},
        "classes": data.class_names,
        "images_per_class": PER_CLASS,
        "sampling": {
            "ddim_steps": spec.num_inference_steps,
            "guidance": spec.guidance,
            "spacing": "trailing",
        },
        "memorisation_ratio": MEMORISATION_RATIO,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    write_json(a.out / "probe.json", out)
    if a.json:
        write_json(a.json, out)
    for r in rows:
        if "near_copies_per_class" not in r:
            continue
        copies = [c for c in r["near_copies_per_class"] if c is not None]
        print(
            f"{r['setting']:<16} agreement {100 * r['agreement']:5.1f}%  judged "
            f"{100 * r['judged_mean']:5.1f}%  near-copies {100 * sum(copies) / len(copies):5.1f}%"
            f"  {r['seconds']:.0f} s"
        )


if __name__ == "__main__":
    main()
