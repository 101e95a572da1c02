"""The same episode gives the same bytes on an idle and on a loaded machine (issue 14.7).

A loaded machine changes two things a run could (wrongly) depend on: the clock (anything
chosen by time or measured speed: checkpoint moments, batch sizes) and thread scheduling
(parallel reductions whose order follows which thread finishes first). The second run here
has a competing CPU-bound process on the same cores and a clock that races ahead by a minute
at every reading, as if each step took that long; every stored file must still match.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyshot.data.registry import load_dataset
from tinyshot.data.sampler import sample_episode
from tinyshot.pipeline.config import PipelineConfig
from tinyshot.pipeline.episode import run_pipeline_episode


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory) -> str:
    from tinyshot.diffusion.model import build_tiny_diffusion_model

    folder = tmp_path_factory.mktemp("gen") / "tiny"
    build_tiny_diffusion_model(pixel_space=True, image_size=16, seed=0).save(folder)
    return str(folder)


def _config(generator: str) -> PipelineConfig:
    return PipelineConfig(
        methods=("support+base", "tint"),
        generator=generator,
        specialize={"ti_steps": 4, "num_inference_steps": 3, "nti_inner_steps": 2},
        synthetic_per_class=6,
        generation_batch_size=4,
        teacher="conv4",
        teacher_input_size=16,
        image_size=16,
        pretrain={"iterations": 4, "batch_size": 16, "max_per_class": 20, "checkpoint_every": 2},
        base_images=30,
        distill={"iterations": 6, "batch_size": 15, "eval_every": 3, "checkpoint_every": 2},
        val_queries_per_class=3,
    ).validate()


def _canonical(obj, h) -> None:
    """Feed obj's content (not its serialisation) into h: torch.save archives and safetensors
    headers are not byte-stable across saves of equal content."""
    if isinstance(obj, torch.Tensor):
        h.update(f"{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(obj.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        h.update(obj.tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            _canonical(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            _canonical(x, h)
    else:
        h.update(repr(obj).encode())


def _digest(folder: Path) -> dict[str, str]:
    """Content hash of every stored result file (logs and timings excluded)."""
    from safetensors import safe_open

    out = {}
    for p in sorted(folder.rglob("*")):
        h = hashlib.sha256()
        if not p.is_file():
            continue
        if p.suffix == ".safetensors":
            with safe_open(str(p), framework="pt") as f:
                names = f.keys()
                _canonical({"meta": f.metadata(), **{k: f.get_tensor(k) for k in names}}, h)
        elif p.suffix == ".pt":
            _canonical(torch.load(p, weights_only=False), h)
        elif p.suffix in (".png", ".jsonl"):
            h.update(p.read_bytes())
        else:
            continue
        out[str(p.relative_to(folder))] = h.hexdigest()
    return out


def _accuracies(folder: Path) -> dict[str, float]:
    methods = json.loads((folder / "result.json").read_text())["methods"]
    return {m: r["accuracy"] for m, r in methods.items()}


def test_an_episode_is_byte_identical_under_load_and_a_slow_clock(
    tiny_generator, tmp_path, monkeypatch
):
    support_ds = load_dataset("fashion-mnist", "novel-train")
    query_ds = load_dataset("fashion-mnist", "novel-test")
    base_ds = load_dataset("fashion-mnist", "base")
    ep = sample_episode(support_ds, 2, 2, 3, seed=4, query_ds=query_ds)
    monkeypatch.setenv("TINYSHOT_CACHE", str(tmp_path / "cache"))  # both runs pretrain alike
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two threads, so that reduction order could depend on scheduling
    try:
        idle = tmp_path / "idle"
        run_pipeline_episode(ep, support_ds, query_ds, base_ds, _config(tiny_generator), idle, 3)
        (tmp_path / "cache").rename(tmp_path / "cache-idle")

        real = {n: getattr(time, n) for n in ("time", "perf_counter", "monotonic")}
        calls = [0]

        def racing(name: str):
            def now() -> float:
                calls[0] += 1
                return real[name]() + 60.0 * calls[0]

            return now

        for name in real:
            monkeypatch.setattr(time, name, racing(name))
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            loaded = tmp_path / "loaded"
            run_pipeline_episode(
                ep, support_ds, query_ds, base_ds, _config(tiny_generator), loaded, 3
            )
        finally:
            hog.kill()
            hog.wait()
            for name, fn in real.items():
                monkeypatch.setattr(time, name, fn)
    finally:
        torch.set_num_threads(threads)
    assert calls[0] > 10  # the pipeline did read the (racing) clock
    a, b = _digest(idle), _digest(loaded)
    assert len(a) >= 15 and a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    assert _accuracies(idle) == _accuracies(loaded)
