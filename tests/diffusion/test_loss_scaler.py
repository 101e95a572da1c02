"""fp16 TI/NTI use dynamic loss scaling with torch.amp.GradScaler's contract: the loss is
scaled for backward, the gradients are unscaled before the step (Adam sees the true ones),
an overflowing step is skipped and the scale lowered, and the scale is a checkpointed state."""

from __future__ import annotations

import pytest
import torch

from tinyshot.diffusion.textual_inversion import INITIAL_FP16_SCALE, LossScaler
from tinyshot.errors import TrainingError


def _half_loss(w: torch.Tensor, x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    # the forward runs in fp16 (as an fp16 UNet does), the parameter stays fp32
    return (w.half() * x.half()).float().sum() * weight


def _step(scaler: LossScaler, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    scaler.backward(loss, opt)
    scaler.step(opt)


def test_overflow_is_skipped_and_the_scale_halves_until_steps_pass():
    w = torch.ones(4, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.1)
    scaler = LossScaler(scale=2.0**20, growth_interval=3)
    x = torch.full((4,), 100.0)  # grad of the scaled fp16 loss: 100 * 2^20 > 65504 -> inf
    scales = []
    for _ in range(12):
        _step(scaler, _half_loss(w, x), opt)
        scales.append(scaler.scale)
    # 100 * 2^k must be <= 65504 for a finite fp16 gradient: k <= 9 -> 11 skips from 2^20
    assert scales == [2.0 ** (19 - k) for k in range(11)] + [2.0**9]
    assert scaler.skipped == 11
    assert opt.state[w]["step"] == 1  # only the finite step reached Adam
    assert torch.allclose(w, torch.full((4,), 0.9))  # and moved w by lr


def test_the_optimizer_sees_unscaled_gradients():
    w = torch.ones(3, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.0)
    scaler = LossScaler(scale=2.0**12)
    scaler.backward(_half_loss(w, torch.tensor([1.0, 2.0, 3.0])), opt)
    assert torch.equal(w.grad, torch.tensor([1.0, 2.0, 3.0]))


def _adam_run(scaler: LossScaler | None, weight: float, steps: int = 6) -> torch.Tensor:
    w = torch.ones(3, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.1)
    x = torch.tensor([0.5, -1.0, 2.0])
    for k in range(steps):
        loss = ((w * x * (k + 1)) ** 2).sum() * weight  # fp32: the scaling is exact
        if scaler is None:
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            _step(scaler, loss, opt)
    return w.detach()


@pytest.mark.parametrize("weight", [1.0, 1e-9])
def test_adams_step_does_not_depend_on_the_scale(weight):
    """The same steps as without scaling, bit for bit, while the scale doubles every step;
    also for gradients near Adam's eps (1e-8), where a scaled gradient would step by lr."""
    plain = _adam_run(None, weight)
    growing = LossScaler(scale=2.0**4, growth_interval=1)
    assert torch.equal(_adam_run(growing, weight), plain)
    assert growing.scale == 2.0**10
    assert torch.equal(_adam_run(LossScaler(scale=INITIAL_FP16_SCALE), weight), plain)


def test_small_fp16_gradients_survive_the_default_scale():
    """Gradients of 2e-11 and 1e-10 through fp16 (as NTI's, inside the UNet, near its early
    stop): the old initial scale of 1024 flushes the first to zero and keeps one significant
    bit of the second; GradScaler's 2^16 keeps both to within 2 %."""
    x = torch.tensor([2e-3, 1e-2, 1.0])
    true = x.half().float() * 1e-8

    def grad(scale: float) -> torch.Tensor:
        w = torch.ones(3, requires_grad=True)
        opt = torch.optim.SGD([w], lr=0.0)
        LossScaler(scale=scale).backward(_half_loss(w, x, 1e-8), opt)
        return w.grad

    old, new = grad(1024.0), grad(INITIAL_FP16_SCALE)
    assert INITIAL_FP16_SCALE == 2.0**16
    assert old[0] == 0.0 and abs(old[1] / true[1] - 1) > 0.1
    assert torch.allclose(new, true, rtol=2e-2, atol=0.0)


def test_fp32_is_unchecked_and_unscaled():
    w = torch.ones(2, requires_grad=True)
    opt = torch.optim.SGD([w], lr=1.0)
    scaler = LossScaler()
    _step(scaler, (w * torch.tensor([float("inf"), 1.0])).sum(), opt)
    assert scaler.scale == 1.0 and scaler.skipped == 0
    assert torch.equal(w.detach(), torch.tensor([-float("inf"), 0.0]))


def test_state_round_trips_and_old_scaled_states_are_refused():
    w = torch.ones(2, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.0)
    scaler = LossScaler(scale=4.0, growth_interval=2)
    _step(scaler, _half_loss(w, torch.full((2,), float("inf"))), opt)  # skipped: 2.0
    for _ in range(3):
        _step(scaler, _half_loss(w, torch.ones(2)), opt)  # 2 good steps: 4.0, 1 more
    other = LossScaler(scale=INITIAL_FP16_SCALE, growth_interval=2)
    other.load_state_dict(scaler.state_dict())
    assert other.state_dict() == scaler.state_dict()
    assert (other.scale, other.skipped, other.grad_scaler._get_growth_tracker()) == (4.0, 1, 1)
    LossScaler().load_state_dict({"scale": 1.0, "good_steps": 5, "skipped": 0})  # fp32: as is
    with pytest.raises(TrainingError, match="older tinyshot"):
        other.load_state_dict({"scale": 1024.0, "good_steps": 5, "skipped": 0})
