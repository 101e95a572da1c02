"""Student augmentation: deterministic given the generator, crops are shifted windows, flips mirror."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinyshot.data.augment import augment_batch, crop_padding


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_padding_scales_with_size():
    assert (crop_padding(32), crop_padding(84), crop_padding(16)) == (4, 10, 2)


def test_deterministic_given_generator():
    x = torch.rand(6, 3, 16, 16, generator=_g(1))
    a = augment_batch(x, _g(5), color_jitter=0.2)
    b = augment_batch(x, _g(5), color_jitter=0.2)
    c = augment_batch(x, _g(6), color_jitter=0.2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1


def test_flip_only_mirrors_some_images():
    x = torch.rand(64, 3, 8, 8, generator=_g(2))
    out = augment_batch(x, _g(0), crop=False)
    same = [torch.equal(o, i) for o, i in zip(out, x)]
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    assert all(s or f for s, f in zip(same, flipped))
    assert 16 < sum(flipped) < 48


def test_crop_is_a_window_of_the_padded_image():
    x = torch.rand(20, 3, 12, 12, generator=_g(3))
    out = augment_batch(x, _g(1), flip=False, padding=3)
    xp = F.pad(x, (3, 3, 3, 3))
    shifts = set()
    for o, p in zip(out, xp):
        hits = [
            (dy, dx)
            for dy in range(7)
            for dx in range(7)
            if torch.equal(o, p[:, dy : dy + 12, dx : dx + 12])
        ]
        assert hits, "output is not a crop of the padded input"
        shifts.add(hits[0])
    assert len(shifts) > 5
