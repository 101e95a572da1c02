"""CPU cost of teacher ensemble members, cold and with a warm feature cache.

Measures process CPU time (one torch thread, so about the wall time on an idle core) per
image of each member on real Fashion-MNIST images prepared as the pipeline does (32 px),
first with an empty feature cache (backbone + shard write), then from a fresh process-level
cache object reading the shards back (hashing + loading). Per-episode figures multiply these
by the episode's image counts.

    OMP_NUM_THREADS=1 PYTHONPATH=src python experiments/teacher_cost.py --images 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from tinyshot.data.registry import load_dataset
from tinyshot.data.transforms import images_to_tensor
from tinyshot.models.backbones import build_ensemble

MEMBERS = [
    "efficientnet-lite0@96",
    "efficientnet-lite0@224",
    "efficientnet-lite1@240",
    "efficientnet-lite2@260",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64, help="the teacher's default is 64")
    ap.add_argument("--members", nargs="+", default=MEMBERS)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset("fashion-mnist", "base")
    x = images_to_tensor(ds.load_images(list(range(args.images))), 32)
    x = (x * 255).round() / 255  # the pipeline's uint8 round trip
    rows = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for spec in args.members:
            t = time.process_time()
            bb = build_ensemble(spec, feature_cache=tmp).eval()
            bb._cache(0)  # weights digest: once per process and member
            build_s = time.process_time() - t
            t = time.process_time()
            for i in range(0, len(x), args.batch_size):
                bb(x[i : i + args.batch_size])
            cold = (time.process_time() - t) / len(x)
            warm_bb = build_ensemble(spec, feature_cache=tmp).eval()
            warm_bb._cache(0)
            t = time.process_time()
            for i in range(0, len(x), args.batch_size):
                warm_bb(x[i : i + args.batch_size])
            warm = (time.process_time() - t) / len(x)
            assert warm_bb._cache(0).misses == 0
            rows[spec] = {"build_s": build_s, "cold_s_per_image": cold, "warm_s_per_image": warm}
            print(
                f"{spec}: build {build_s:.2f} s, cold {1000 * cold:.1f} ms/image, "
                f"warm {1000 * warm:.2f} ms/image",
                flush=True,
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
