"""fp16 TI/NTI use dynamic loss scaling: an overflowing step is skipped, never applied."""

from __future__ import annotations

import torch

from tinyshot.diffusion.textual_inversion import INITIAL_FP16_SCALE, LossScaler


def _half_loss(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # the forward runs in fp16 (as an fp16 UNet does), the parameter stays fp32
    return (w.half() * x.half()).sum().float()


def test_overflow_is_skipped_and_the_scale_halves_until_steps_pass():
    w = torch.ones(4, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.1)
    scaler = LossScaler(scale=2.0**20, growth_interval=3)
    x = torch.full((4,), 100.0)  # grad of the scaled fp16 loss: 100 * 2^20 > 65504 -> inf
    taken = []
    for _ in range(12):
        ok = scaler.backward(_half_loss(w, x), [w], opt)
        if ok:
            opt.step()
        taken.append(ok)
    # 100 * 2^k must be <= 65504 for a finite fp16 gradient: k <= 9 -> 11 skips from 2^20
    assert taken[:11] == [False] * 11 and taken[11]
    assert scaler.skipped == 11 and scaler.scale == 2.0**9
    assert torch.all(w < 1.0)  # only the finite step moved w (Adam: by lr)
    assert torch.allclose(w, torch.full((4,), 0.9))


def test_scale_grows_after_good_steps_and_round_trips():
    w = torch.ones(2, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.0)
    scaler = LossScaler(scale=4.0, growth_interval=2)
    for _ in range(4):
        assert scaler.backward(_half_loss(w, torch.ones(2)), [w], opt)
    assert scaler.scale == 16.0
    other = LossScaler()
    other.load_state_dict(scaler.state_dict())
    assert other.state_dict() == {"scale": 16.0, "good_steps": 4, "skipped": 0}


def test_fp32_is_unchecked_and_unscaled():
    w = torch.ones(2, requires_grad=True)
    opt = torch.optim.SGD([w], lr=1.0)
    scaler = LossScaler()
    assert scaler.backward((w * torch.tensor([float("inf"), 1.0])).sum(), [w], opt)
    assert scaler.scale == 1.0 and INITIAL_FP16_SCALE == 1024.0
