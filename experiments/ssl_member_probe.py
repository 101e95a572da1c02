"""Does a self-supervised in-domain member lift the teacher? (issue 12.4, stop 23)

P>M>F's teacher starts from DINO, self-supervised on ImageNet images that include the novel
classes unlabelled. The offline analogue: SimCLR on the Fashion-MNIST images the concept-known
generator saw (the train split minus the held-out novel pool, labels unused), then the
backbone joins the default teacher as a `student:<checkpoint>` member. Scored on TRAIN-split
episodes drawn from the held-out pool (the member never saw those images), same seeds and
teacher view as experiments/tune_teacher.py.

    PYTHONPATH=src python experiments/ssl_member_probe.py runs/ssl --iterations 1200 --stop-after 750

Training resumes from OUT/ssl.pt up to --stop-after when rerun (1.2-1.4 s per iteration of
batch 256 on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from teacher_head_probes import MEMBERS, proto_predict, root

from tinyshot.data.base import ArrayDataset
from tinyshot.data.fashion_mnist import heldout_pool, load_fashion_mnist
from tinyshot.data.registry import load_dataset
from tinyshot.data.sampler import sample_episodes
from tinyshot.distill.ssl_pretrain import SSLConfig, ssl_pretrain
from tinyshot.models.backbones import build_ensemble
from tinyshot.models.ensemble import with_student
from tinyshot.pipeline.config import PipelineConfig
from tinyshot.pipeline.episode_data import load_episode_data
from tinyshot.pipeline.student_stage import pretrained_student_path
from tinyshot.utils.checkpoint import load_checkpoint
from tinyshot.utils.logging import log_to


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--iterations", type=int, default=1200, help="length of the lr schedule")
    ap.add_argument("--stop-after", type=int, default=750, help="iterations trained (<= the above)")
    ap.add_argument("--episodes", type=int, default=18)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    full = load_fashion_mnist("train")
    keep = np.setdiff1d(np.arange(len(full.labels)), heldout_pool(full.labels))
    unlabelled = ArrayDataset(
        full.images[keep], full.labels[keep], full.class_names, full.name, "train-minus-pool"
    )
    ckpt = args.out / "ssl.pt"
    done = int(load_checkpoint(ckpt)["step"]) if ckpt.is_file() else 0
    if done < args.stop_after:
        with log_to(args.out):
            cfg = SSLConfig(iterations=args.iterations)
            ssl_pretrain("conv4", unlabelled, cfg, ckpt, args.stop_after - done)

    ds = load_dataset("fashion-mnist", "novel-pool")
    config = PipelineConfig(methods=("teacher",))
    student = pretrained_student_path(load_dataset("fashion-mnist", "base"), config)
    episodes = sample_episodes(ds, args.episodes, 5, 5, args.queries, args.seed)
    data = [load_episode_data(ep, ds, None, None, config, args.seed) for ep in episodes]
    images = [torch.cat([d.teacher_support, d.teacher_query]).float() / 255.0 for d in data]
    sls, qls = [d.support_labels for d in data], [d.query_labels for d in data]
    specs = [*MEMBERS, f"student:{ckpt}"]
    feats = {}
    with torch.no_grad():
        for spec in specs:
            bb = build_ensemble(with_student(spec, student)[0]).eval()
            feats[spec] = [root(bb.member_features(0, x)) for x in images]

    def score(members: list[str]) -> list[float]:
        accs = []
        for e in range(len(data)):
            pred = proto_predict(torch.cat([feats[m][e] for m in members], 1), sls[e])
            accs.append(100 * float((pred == qls[e]).double().mean()))
        return accs

    ref = score(MEMBERS)
    print(f"{len(ref)} train-split episodes from the held-out pool, {len(qls[0])} queries each")
    print("| teacher | mean % | minus the default, paired (+- s.e.) |\n|---|---|---|")
    rows = {
        "default (student + L0@96 + L1@96)": MEMBERS,
        "SSL member alone": specs[-1:],
        "default + SSL member": specs,
        "L0@96 + L1@96 + SSL member (no base student)": [*MEMBERS[1:], specs[-1]],
    }
    for name, members in rows.items():
        accs = score(members)
        d = [a - r for a, r in zip(accs, ref, strict=True)]
        se = statistics.stdev(d) / len(d) ** 0.5
        print(f"| {name} | {statistics.mean(accs):.2f} | {statistics.mean(d):+.2f} +- {se:.2f} |")


if __name__ == "__main__":
    main()
