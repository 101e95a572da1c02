"""Class fidelity: the judge is a real classifier, and fidelity is the judged share, exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinyshot.errors import ConfigError, DataError
from tinyshot.evaluation.fidelity import (
    class_fidelity,
    generator_sampler,
    generator_spacing,
    load_judge,
    measure_generator,
    predict,
    train_judge,
)


class BrightnessJudge(torch.nn.Module):
    """Class k <=> mean brightness in [k/10, (k+1)/10): a judge whose answers are known."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = (x.mean(dim=(1, 2, 3)) * 10).floor().clamp(0, 9).long()
        return torch.nn.functional.one_hot(k, 10).float()


def test_fidelity_is_the_judged_share_per_class():
    classes = [f"c{k}" for k in range(10)]
    captions = {"c2": "a photo of a c2", "c7": "a photo of a c7"}
    right = {"a photo of a c2": 3, "a photo of a c7": 1}  # images of the captioned class

    def sampler(caps, n):
        out = []
        for cap in caps:
            want = int(cap[-1])
            for i in range(n):
                k = want if i < right[cap] else (want + 1) % 10
                out.append(torch.full((1, 4, 4), (k + 0.5) / 10))
        return torch.stack(out)

    res = class_fidelity(sampler, BrightnessJudge(), captions, classes, n_per_class=4)
    assert res["per_class"] == {"c2": 0.75, "c7": 0.25}
    assert res["mean"] == 0.5 and res["min"] == 0.25 and res["chance"] == 0.1
    assert res["confused_with"] == {"c2": {"c3": 1}, "c7": {"c8": 3}}
    with pytest.raises(DataError, match="not judge classes"):
        class_fidelity(sampler, BrightnessJudge(), {"dog": "a photo of a dog"}, classes, 4)


def test_judge_trains_on_the_real_train_split():
    torch.manual_seed(0)
    _, info = train_judge(limit=3000, epochs=1)
    assert info["train_split"] == "train" and info["train_images"] == 3000
    assert info["loss_end"] < 0.6 * info["loss_start"]
    assert info["test_accuracy"] > 0.70  # chance 0.10; measured 0.79 with 5000 images
    assert set(info["test_accuracy_per_class"]) == set(info["class_names"])


def test_shipped_judge_scores_what_it_records():
    from tinyshot.data.fashion_mnist import load_fashion_mnist

    judge, info = load_judge("fashion-mnist")
    assert info["train_split"] == "train" and info["train_images"] == 60000
    assert info["test_accuracy"] >= 0.88
    # trained with nuisance augmentation: a grey floor and noise do not decide the class
    assert info["test_accuracy_floor02_noise01"] >= 0.85  # measured 0.889 (unaugmented: 0.43)
    test = load_fashion_mnist("test")
    x = torch.from_numpy(np.array(test.images[:2000])).float().div(255).unsqueeze(1)
    acc = float((predict(judge, x) == np.asarray(test.labels[:2000])).mean())
    assert abs(acc - info["test_accuracy"]) < 0.03  # same judge, a 2000-image subset
    with pytest.raises(ConfigError, match="no judge checkpoint"):
        load_judge("cifar-fs")


def _shipped_known():
    from tinyshot.diffusion.pretrain import default_generator_path

    d = default_generator_path("fashion-mnist-known")
    if not (d / "unet" / "diffusion_pytorch_model.safetensors").is_file():
        pytest.skip("shipped generator weights not present")
    return d


def test_fidelity_samples_with_the_pipelines_spacing():
    """The check must judge the sampler that makes the method's images: the pipeline resolves
    the shipped generator's spacing to trailing although its scheduler config says leading."""
    from diffusers import DDIMScheduler

    from tinyshot.diffusion.ddim import resolve_spacing
    from tinyshot.diffusion.model import load_diffusion_model

    d = _shipped_known()
    assert DDIMScheduler.load_config(d / "scheduler")["timestep_spacing"] == "leading"
    model = load_diffusion_model(d, device="cpu")
    assert generator_spacing(d) == resolve_spacing(model, None) == "trailing"
    assert generator_spacing(d, "leading") == "leading"
    cap = ["a photo of a bag"]
    default = generator_sampler(d, 2, 3.0, seed=1)(cap, 2)
    trailing = generator_sampler(d, 2, 3.0, seed=1, timestep_spacing="trailing")(cap, 2)
    leading = generator_sampler(d, 2, 3.0, seed=1, timestep_spacing="leading")(cap, 2)
    assert torch.equal(default, trailing)
    assert (default - leading).abs().max() > 0.05  # 2 steps: t = 999, 499 against 501, 1


def test_measure_generator_reports_the_judges_ceiling():
    d = _shipped_known()
    res = measure_generator(d, guidances=(3.0,), steps=2, n_per_class=2, seed=0)
    _, jinfo = load_judge("fashion-mnist")
    assert res["timestep_spacing"] == "trailing" and res["steps"] == 2
    assert res["judge_real_recall"] == jinfo["test_accuracy_per_class"]
    r = res["by_guidance"]["3"]
    assert set(r["per_class"]) == set(jinfo["class_names"])
    assert r["below_target"] == sorted(c for c, v in r["per_class"].items() if v < 0.85)
