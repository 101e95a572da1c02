"""DDIM arithmetic against diffusers, Eq. 3-4 (blend_noise), batched NTI = separate NTI."""

from __future__ import annotations

import copy

import pytest
import torch

from tinyshot.diffusion.ddim import X0Rule, ddim_move, ddim_sample, make_schedule
from tinyshot.diffusion.generate import blend_noise
from tinyshot.diffusion.inversion import negative_prompt_inversion, null_text_inversion
from tinyshot.diffusion.model import SD15_SCHEDULER, build_tiny_diffusion_model, make_ddim_scheduler
from tinyshot.errors import ConfigError, ModelError


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_diffusion_model(seed=2)


BOUNDS = {
    "none": {},
    "clip": {"clip_sample": True, "clip_sample_range": 1.0},
    "clip-range": {"clip_sample": True, "clip_sample_range": 1.5},
    "threshold": {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.8},
    "v-clip": {"prediction_type": "v_prediction", "clip_sample": True},
}


@pytest.mark.parametrize("bound", list(BOUNDS))
@pytest.mark.parametrize("spacing,steps", [("trailing", 10), ("leading", 7), ("linspace", 5)])
def test_ddim_move_matches_diffusers_step_bit_exactly(tiny, spacing, steps, bound):
    config = {**SD15_SCHEDULER, **BOUNDS[bound]}
    sched = make_ddim_scheduler(config, spacing)
    sched.set_timesteps(steps)
    model = copy.copy(tiny)
    model.scheduler = make_ddim_scheduler(config)
    ours = make_schedule(model, steps, spacing)
    assert torch.equal(ours.timesteps, sched.timesteps.long())
    assert ours.rule.clip_sample == bool(config.get("clip_sample"))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 8, 8, generator=g) * 3  # large: x0 predictions leave [-1, 1]
    ref = z.clone()
    for i, t in enumerate(sched.timesteps):
        eps = torch.randn(3, 4, 8, 8, generator=g)
        ref = sched.step(eps, t, ref).prev_sample
        z = ddim_move(z, eps, ours.alpha[i], ours.alpha_prev[i], ours.rule)
        assert torch.equal(z, ref)
    if bound != "none":  # the bound changed the result: unbounded steps land elsewhere
        z = ref.clone()
        a, ap = ours.alpha[0], ours.alpha_prev[0]
        e = torch.randn(3, 4, 8, 8, generator=g) * 3
        assert not torch.equal(
            ddim_move(z, e, a, ap, ours.rule), ddim_move(z, e, a, ap, ours.rule.unbounded())
        )


def test_x0_rule_clips_predictions_into_the_configured_range():
    g = torch.Generator().manual_seed(3)
    z, eps = torch.randn(4, 3, 8, 8, generator=g) * 2, torch.randn(4, 3, 8, 8, generator=g)
    a = torch.tensor(0.05)
    rule = X0Rule(clip_sample=True, clip_sample_range=1.0)
    # with a_to = 1 the step returns its x0 prediction itself
    x0 = ddim_move(z, eps, a, torch.tensor(1.0), rule)
    free = ddim_move(z, eps, a, torch.tensor(1.0), rule.unbounded())
    assert float(x0.abs().max()) <= 1.0 < float(free.abs().max())
    thr = X0Rule(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=10.0)
    x0t = ddim_move(z, eps, a, torch.tensor(1.0), thr)
    assert float(x0t.abs().max()) <= 1.0 + 1e-6 and not torch.allclose(x0t, x0)
    with pytest.raises(ModelError, match="prediction_type"):
        ddim_move(z, eps, a, a, X0Rule(prediction_type="flow"))


def test_ddim_move_inverts_itself():
    g = torch.Generator().manual_seed(1)
    z, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    a, b = torch.tensor(0.3), torch.tensor(0.9)
    assert torch.allclose(ddim_move(ddim_move(z, eps, a, b), eps, b, a), z, atol=1e-5)


def test_blend_noise_eq4_norm_and_limits():
    g = torch.Generator().manual_seed(0)
    z_T = torch.randn(4, 4, 8, 8, generator=g) * 1.7
    n = torch.randn(4, 4, 8, 8, generator=g)
    norms = lambda v: v.flatten(1).norm(dim=1)  # noqa: E731
    for a in (0.1, 0.5, 0.9):
        out = blend_noise(z_T, n, a)
        want = (1 - a) * norms(z_T) + a * norms(n)
        assert torch.allclose(norms(out), want, rtol=1e-5)
        # direction is the plain blend's (Eq. 3)
        cos = torch.nn.functional.cosine_similarity(
            out.flatten(1), ((1 - a) * z_T + a * n).flatten(1)
        )
        assert torch.allclose(cos, torch.ones(4), atol=1e-6)
        # the plain blend has a lower norm, which is what Eq. 4 repairs
        assert bool((norms((1 - a) * z_T + a * n) < want).all())
    assert torch.equal(blend_noise(z_T, n, 0.0), z_T)
    assert torch.equal(blend_noise(z_T, n, 1.0), n)
    per_sample = blend_noise(z_T, n, torch.tensor([0.0, 1.0, 0.5, 0.5]))
    assert torch.equal(per_sample[0], z_T[0]) and torch.equal(per_sample[1], n[1])
    assert torch.allclose(per_sample[2:], blend_noise(z_T[2:], n[2:], 0.5))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="alpha"):
            blend_noise(z_T, n, bad)


def test_sample_with_per_sample_start_equals_separate_runs(tiny):
    sched = make_schedule(tiny, 6, "trailing")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 8, 8, generator=g)
    cond = torch.randn(2, 77, 32, generator=g)
    empty = tiny.empty_embedding()

    def unc(i, r):
        return empty.expand(len(r), -1, -1)

    both = ddim_sample(tiny, z, cond, unc, sched, 7.5, start=torch.tensor([0, 3]))
    a = ddim_sample(tiny, z[:1], cond[:1], unc, sched, 7.5, start=torch.tensor([0]))
    b = ddim_sample(tiny, z[1:], cond[1:], unc, sched, 7.5, start=torch.tensor([3]))
    assert torch.allclose(both, torch.cat([a, b]), atol=1e-5)


def test_batched_nti_equals_one_image_at_a_time(tiny):
    sched = make_schedule(tiny, 3, "trailing")
    g = torch.Generator().manual_seed(4)
    z0 = torch.randn(2, 4, 8, 8, generator=g)
    cond = torch.randn(2, 77, 32, generator=g)
    kw = dict(guidance=7.5, inner_steps=4, lr=0.05, early_stop=1e-3, show_progress=False)
    both = null_text_inversion(tiny, z0, cond, sched, **kw)
    one = [null_text_inversion(tiny, z0[i : i + 1], cond[i : i + 1], sched, **kw) for i in range(2)]
    assert both.null_embeddings.shape == (2, 3, 77, 32)
    for i in range(2):
        assert torch.allclose(both.z_T[i], one[i].z_T[0], atol=1e-5)
        # Same maths per image; batch-size rounding (~1e-7) is only visible where Adam
        # normalizes a near-zero gradient, so compare the mean and bound the worst element.
        diff = (both.null_embeddings[i] - one[i].null_embeddings[0]).abs()
        assert float(diff.mean()) < 1e-5 and float(diff.max()) < 1e-2
        assert int(both.inner_steps[i]) == int(one[i].inner_steps[0])
        assert torch.allclose(both.recon_error[i], one[i].recon_error[0], rtol=1e-4)
    # NTI moves the null embeddings away from the empty prompt's; NPI uses the condition
    assert not torch.allclose(both.null_embeddings[:, 0], tiny.empty_embedding().expand(2, -1, -1))
    npi = negative_prompt_inversion(tiny, z0, cond, sched)
    assert torch.equal(npi.z_T, both.z_T)
    assert npi.null_embeddings.shape == (2, 1, 77, 32)
    assert torch.equal(npi.null_embeddings[:, 0], cond)


def test_nti_steps_before_its_early_stop_as_mokady_et_al(tiny):
    """Their inner loop: loss, backward, step, then `if loss < eps + i * 2e-5: break`, so
    every timestep (the first one too) is optimised at least once, however loose the stop."""
    sched = make_schedule(tiny, 3, "trailing")
    g = torch.Generator().manual_seed(5)
    z0 = torch.randn(2, 4, 8, 8, generator=g)
    cond = torch.randn(2, 77, 32, generator=g)
    kw = dict(guidance=7.5, inner_steps=4, lr=0.05, show_progress=False)
    loose = null_text_inversion(tiny, z0, cond, sched, early_stop=1e9, **kw)
    assert loose.inner_steps.tolist() == [3, 3]  # exactly one step per timestep
    empty = tiny.empty_embedding()[0]
    for i in range(3):
        assert not torch.allclose(loose.null_embeddings[:, i], empty.expand(2, -1, -1))
    tight = null_text_inversion(tiny, z0, cond, sched, early_stop=0.0, **kw)
    assert tight.inner_steps.tolist() == [12, 12]
    assert bool((tight.recon_error < loose.recon_error).all())
    assert tight.reconstruction is not None and tight.reconstruction.shape == z0.shape
