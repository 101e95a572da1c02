"""DDIM arithmetic against diffusers, Eq. 3-4 (blend_noise), batched NTI = separate NTI."""

from __future__ import annotations

import pytest
import torch

from tinyshot.diffusion.ddim import ddim_move, ddim_sample, make_schedule
from tinyshot.diffusion.generate import blend_noise
from tinyshot.diffusion.inversion import negative_prompt_inversion, null_text_inversion
from tinyshot.diffusion.model import SD15_SCHEDULER, build_tiny_diffusion_model, make_ddim_scheduler
from tinyshot.errors import ConfigError


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_diffusion_model(seed=2)


@pytest.mark.parametrize("spacing,steps", [("trailing", 10), ("leading", 7), ("linspace", 5)])
def test_ddim_move_matches_diffusers_step_bit_exactly(tiny, spacing, steps):
    sched = make_ddim_scheduler(dict(SD15_SCHEDULER), spacing)
    sched.set_timesteps(steps)
    ours = make_schedule(tiny, steps, spacing)
    assert torch.equal(ours.timesteps, sched.timesteps.long())
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 8, 8, generator=g)
    ref = z.clone()
    for i, t in enumerate(sched.timesteps):
        eps = torch.randn(3, 4, 8, 8, generator=g)
        ref = sched.step(eps, t, ref).prev_sample
        z = ddim_move(z, eps, ours.alpha[i], ours.alpha_prev[i])
        assert torch.equal(z, ref)


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
