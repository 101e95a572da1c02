"""Choose the offline teacher on TRAIN-split episodes (Fashion-MNIST novel-train supports and
queries, disjoint; never the test split).

Extracts each candidate member's features once through the on-disk feature cache
($TINYSHOT_CACHE/features), then scores every ensemble of members, with and without the
square-root power transform, as a ProtoNet (the teacher's own `compute_prototypes`). Images
are prepared exactly as the pipeline prepares them for the teacher (`load_episode_data`'s
teacher view: the 28 px originals). The member `student` is the pipeline's: the student's
base-class pretraining (the shipped Conv4 at 32 px), which resizes images as the student does.

    OMP_NUM_THREADS=1 PYTHONPATH=src python experiments/tune_teacher.py --episodes 5 --queries 150 \
        --out runs/tune-teacher
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tinyshot.data.registry import load_dataset
from tinyshot.data.sampler import sample_episodes
from tinyshot.models.backbones import build_ensemble
from tinyshot.models.ensemble import with_student
from tinyshot.models.teacher import ProtoNetTeacher, build_teacher
from tinyshot.pipeline.config import PipelineConfig
from tinyshot.pipeline.episode_data import load_episode_data
from tinyshot.pipeline.student_stage import pretrained_student_path

MEMBERS = [
    "student",
    "efficientnet-lite0@96",
    "efficientnet-lite1@96",
    "efficientnet-lite0@224",
    "efficientnet-lite1@240",
    "efficientnet-lite2@260",
]


def accuracy(feats: list[torch.Tensor], power: float, sl: torch.Tensor, ql: torch.Tensor) -> float:
    """ProtoNet accuracy on the concatenation of per-member transformed, normalised features."""
    parts = []
    for f in feats:
        if power != 1.0:
            f = f.sign() * f.abs().pow(power)
        parts.append(F.normalize(f, dim=-1))
    x = torch.cat(parts, dim=1)
    ns = len(sl)
    protos = ProtoNetTeacher.compute_prototypes(x[:ns], sl)
    pred = (F.normalize(x[ns:], dim=-1) @ protos.t()).argmax(1)
    return float((pred == ql).double().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--queries", type=int, default=150)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--members", nargs="+", default=MEMBERS)
    ap.add_argument("--out", type=Path, default=Path("runs/tune-teacher"))
    ap.add_argument(
        "--check", default=None, help="teacher spec to rerun through build_teacher (cross-check)"
    )
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("fashion-mnist", "novel-train")
    episodes = sample_episodes(ds, args.episodes, 5, 5, args.queries, args.seed)
    config = PipelineConfig(methods=("teacher",))
    student = pretrained_student_path(load_dataset("fashion-mnist", "base"), config)
    data = [load_episode_data(ep, ds, None, None, config, args.seed) for ep in episodes]
    feats: dict[str, list[torch.Tensor]] = {}
    seconds: dict[str, float] = {}
    for spec in args.members:
        # one member: its cache, its raw features below
        bb = build_ensemble(with_student(spec, student)[0]).eval()
        t0 = time.perf_counter()
        per_ep = []
        with torch.no_grad():
            for d in data:
                x = torch.cat([d.teacher_support, d.teacher_query]).float() / 255.0
                per_ep.append(
                    torch.cat([bb.member_features(0, x[i : i + 16]) for i in range(0, len(x), 16)])
                )
        seconds[spec] = time.perf_counter() - t0
        feats[spec] = per_ep
        print(f"{spec}: {seconds[spec]:.1f} s, cache {bb._cache(0).hits} hits", flush=True)
    rows = []
    for r in range(1, len(args.members) + 1):
        for combo in itertools.combinations(args.members, r):
            for power in (1.0, 0.5):
                accs = [
                    accuracy([feats[m][e] for m in combo], power, d.support_labels, d.query_labels)
                    for e, d in enumerate(data)
                ]
                rows.append(
                    {
                        "members": list(combo),
                        "power": power,
                        "episodes": accs,
                        "mean": sum(accs) / len(accs),
                    }
                )
    rows.sort(key=lambda r: -r["mean"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "candidates.json").write_text(
        json.dumps(
            {"args": {**vars(args), "out": str(args.out)}, "extract_s": seconds, "rows": rows},
            indent=1,
        )
    )
    for r in rows:
        eps = " ".join(f"{100 * a:5.1f}" for a in r["episodes"])
        print(f"{100 * r['mean']:5.1f}  [{eps}]  power={r['power']:g}  {'+'.join(r['members'])}")
    if args.check:  # the real teacher (cached features) must reproduce the table's numbers
        teacher = build_teacher(with_student(args.check, student)[0]).eval()
        accs = []
        for d in data:
            teacher.set_support(d.teacher_support.float() / 255.0, d.support_labels)
            p = teacher.predict_proba(d.teacher_query.float() / 255.0)
            accs.append(float((p.argmax(1) == d.query_labels).double().mean()))
        eps = " ".join(f"{100 * a:5.1f}" for a in accs)
        print(f"build_teacher({args.check!r}): {100 * sum(accs) / len(accs):5.1f}  [{eps}]")


if __name__ == "__main__":
    main()
