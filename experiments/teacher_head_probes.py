"""Probes of the default teacher's head and features on TRAIN-split episodes (issue 12.4).

The default teacher (`effnet-lite-student`: the base-pretrained Conv4 + Lite0@96 + Lite1@96,
square-rooted, L2-normalised, concatenated, ProtoNet head) scores 90.56% on the 18 tuning
episodes of experiments/tune_teacher.py. This script asks whether anything cheap on the same
backbones lifts it: a logistic-regression head on the supports instead of prototypes,
SimpleShot-style centering (on the base-class mean or the support mean), pooled intermediate
blocks of the Lite members, and the members' own ImageNet logits as extra features. It also
prints the teacher's confusions, to say where its errors are.

    PYTHONPATH=src python experiments/teacher_head_probes.py --episodes 18 --threads 2

Same episodes, seeds and teacher view as tune_teacher.py; features go through the feature
cache. Accuracies are means over episodes (30 queries per class each); a paired difference
is printed with its standard error over episodes.
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from tinyshot.data.registry import load_dataset
from tinyshot.data.sampler import sample_episodes
from tinyshot.data.transforms import teacher_view
from tinyshot.models.backbones import EfficientNetLiteBackbone, build_ensemble
from tinyshot.models.ensemble import with_student
from tinyshot.pipeline.config import PipelineConfig
from tinyshot.pipeline.episode_data import load_episode_data
from tinyshot.pipeline.student_stage import pretrained_student_path

MEMBERS = ["student", "efficientnet-lite0@96", "efficientnet-lite1@96"]
LITE = MEMBERS[1:]


def root(f: torch.Tensor) -> torch.Tensor:
    """The teacher's member transform: square root, then unit length."""
    return F.normalize(f.sign() * f.abs().sqrt(), dim=-1)


def proto_predict(x: torch.Tensor, sl: torch.Tensor) -> torch.Tensor:
    ns = len(sl)
    protos = F.normalize(torch.stack([x[:ns][sl == c].mean(0) for c in range(int(sl.max()) + 1)]))
    return (F.normalize(x[ns:], dim=-1) @ protos.t()).argmax(1)


def lr_predict(x: torch.Tensor, sl: torch.Tensor, wd: float) -> torch.Tensor:
    """Multinomial logistic regression on the supports (L-BFGS, L2 penalty wd)."""
    ns, k = len(sl), int(sl.max()) + 1
    w = torch.zeros(x.shape[1], k, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x[:ns] @ w + b, sl) + wd * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (x[ns:] @ w + b).argmax(1)


def lite_blocks(bb: EfficientNetLiteBackbone, x: torch.Tensor) -> list[torch.Tensor]:
    """Pooled output of every MBConv block, then of the head (the member's usual feature)."""
    net = bb.net
    h = bb.prepare(x).contiguous(memory_format=torch.channels_last)
    h = net._swish(net._bn0(net._conv_stem(h)))
    out = []
    for block in net._blocks:
        h = block(h)
        out.append(h.mean(dim=(2, 3)))
    out.append(net._swish(net._bn1(net._conv_head(h))).mean(dim=(2, 3)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=18)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--base-images", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("fashion-mnist", "novel-train")
    base_ds = load_dataset("fashion-mnist", "base")
    episodes = sample_episodes(ds, args.episodes, 5, 5, args.queries, args.seed)
    config = PipelineConfig(methods=("teacher",))
    student = pretrained_student_path(base_ds, config)
    data = [load_episode_data(ep, ds, None, None, config, args.seed) for ep in episodes]
    pick = np.sort(np.random.default_rng(0).choice(len(base_ds), args.base_images, replace=False))
    base_x = teacher_view(base_ds.load_images(pick), config.teacher_input_size).float() / 255.0
    images = [torch.cat([d.teacher_support, d.teacher_query]).float() / 255.0 for d in data]
    sls = [d.support_labels for d in data]
    qls = [d.query_labels for d in data]

    feats: dict[str, list[torch.Tensor]] = {}
    base: dict[str, torch.Tensor] = {}
    blocks: dict[str, list[list[torch.Tensor]]] = {}
    logits: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for spec in MEMBERS:
            bb = build_ensemble(with_student(spec, student)[0]).eval()
            feats[spec] = [bb.member_features(0, x) for x in images]
            base[spec] = bb.member_features(0, base_x)
            if spec in LITE:
                lite = bb.members[0]
                assert isinstance(lite, EfficientNetLiteBackbone)
                per_ep = []
                for x in images:
                    chunks = [lite_blocks(lite, x[i : i + 16]) for i in range(0, len(x), 16)]
                    per_ep.append([torch.cat(c) for c in zip(*chunks, strict=True)])
                blocks[spec] = per_ep
                logits[spec] = [lite.net._fc(f) for f in feats[spec]]

    def score(
        make: Callable[[int], torch.Tensor], head: Callable[..., torch.Tensor] = proto_predict
    ) -> list[float]:
        return [
            100 * float((head(make(e), sls[e]) == qls[e]).double().mean()) for e in range(len(data))
        ]

    def default(e: int) -> list[torch.Tensor]:
        return [root(feats[m][e]) for m in MEMBERS]

    ref = score(lambda e: torch.cat(default(e), 1))
    n = len(ref)

    def row(name: str, accs: list[float]) -> None:
        d = [a - r for a, r in zip(accs, ref, strict=True)]
        se = statistics.stdev(d) / n**0.5 if n > 1 else float("nan")
        print(f"| {name} | {statistics.mean(accs):.2f} | {statistics.mean(d):+.2f} +- {se:.2f} |")

    print(f"{n} train-split episodes, {len(qls[0])} queries each\n")
    print("| teacher variant | mean % | minus the default, paired (+- s.e.) |\n|---|---|---|")
    row("default: ProtoNet on student + L0@96 + L1@96, power 0.5", ref)
    for wd in (3e-3, 1e-2, 3e-2):
        row(
            f"logistic regression on the supports, L2 {wd:g}",
            score(
                lambda e: torch.cat(default(e), 1),
                lambda x, sl, wd=wd: lr_predict(x, sl, wd),
            ),
        )

    def centered(e: int, on: str) -> torch.Tensor:
        parts = []
        for m in MEMBERS:
            f = feats[m][e].sign() * feats[m][e].abs().sqrt()
            b = base[m].sign() * base[m].abs().sqrt()
            mean = b.mean(0) if on == "base" else f[: len(sls[e])].mean(0)
            parts.append(F.normalize(f - mean, dim=-1))
        return torch.cat(parts, 1)

    row("centred on the base-class mean, then normalised", score(lambda e: centered(e, "base")))
    row("centred on the support mean, then normalised", score(lambda e: centered(e, "support")))
    for m in LITE:
        for j in (4, 7, 10, 14, -2):  # stage ends: 40, 80, 112, 192, 320 channels (Lite0)
            width = blocks[m][0][j].shape[1]
            accs = score(lambda e, m=m, j=j: torch.cat([*default(e), root(blocks[m][e][j])], 1))
            row(f"+ {m} block {j % len(blocks[m][0])} ({width}-d) as a member", accs)
    row(
        "+ both Lite members' ImageNet logits (centred, normalised)",
        score(
            lambda e: torch.cat(
                default(e)
                + [F.normalize(z[e] - z[e].mean(1, keepdim=True), dim=-1) for z in logits.values()],
                1,
            )
        ),
    )

    confusions: Counter[tuple[str, str]] = Counter()
    for e, ep in enumerate(episodes):
        pred = proto_predict(torch.cat(default(e), 1), sls[e])
        for t, p in zip(qls[e].tolist(), pred.tolist(), strict=True):
            confusions[ep.classes[t], ep.classes[p]] += 1
    totals: Counter[str] = Counter()
    for (t, _), v in confusions.items():
        totals[t] += v
    print(
        "\n| true class | accuracy % | most frequent confusions (% of the class) |\n|---|---|---|"
    )
    for t in sorted(totals):
        wrong = sorted(
            ((v, p) for (tt, p), v in confusions.items() if tt == t and p != t), reverse=True
        )
        text = ", ".join(f"{p} {100 * v / totals[t]:.1f}" for v, p in wrong[:3])
        print(f"| {t} | {100 * confusions[t, t] / totals[t]:.1f} | {text} |")


if __name__ == "__main__":
    main()
