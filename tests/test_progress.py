"""Progress a person can follow: without a terminal, INFO lines at each 10% (or every 30 s)
with the figures a stage reports; on a terminal a bar; weight loading says one line."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from tinyshot.utils import logging as tlog


@pytest.fixture
def eager(monkeypatch):
    """Report at every 10% mark, however fast the loop."""
    monkeypatch.setattr(tlog, "PROGRESS_MIN_S", 0.0)
    monkeypatch.setattr(tlog, "bars_on_terminal", lambda: False)


def _lines(caplog, prefix: str, level: int = logging.INFO) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == level and r.getMessage().startswith(prefix)
    ]


def test_without_a_terminal_progress_is_info_lines(eager, caplog):
    caplog.set_level(logging.INFO, logger="tinyshot")
    bar = tlog.progress(range(20), desc="textual inversion", total=20)
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.4f}")
    lines = _lines(caplog, "textual inversion:")
    assert len(lines) == 10  # at 10%, 20%, ..., 90% and a closing line
    assert lines[2].startswith("textual inversion: step 6/20 (30%), loss 0.1667, ")
    assert re.search(r"\d+ s left$", lines[2])
    assert re.fullmatch(
        r"textual inversion: step 20/20 \(100%\), loss 0\.0500, done in \d+ s", lines[-1]
    )


def test_resumed_loop_counts_from_where_it_was(eager, caplog):
    caplog.set_level(logging.INFO, logger="tinyshot")
    list(tlog.progress(range(7, 10), desc="distill", total=10, initial=7, unit="batch"))
    lines = _lines(caplog, "distill:")
    assert lines[0].startswith("distill: batch 8/10 (80%)") and "10/10 (100%)" in lines[-1]


def test_time_based_lines_when_marks_are_far_apart(monkeypatch, caplog):
    monkeypatch.setattr(tlog, "bars_on_terminal", lambda: False)
    monkeypatch.setattr(tlog, "PROGRESS_EVERY_S", 0.0)  # every item is "30 s later"
    monkeypatch.setattr(tlog, "PROGRESS_MIN_S", 1e9)  # 10% marks alone never print
    caplog.set_level(logging.INFO, logger="tinyshot")
    list(tlog.progress(range(1000), desc="slow", total=1000))
    assert len(_lines(caplog, "slow:")) == 1000  # 999 periodic + the closing line


def test_fast_loops_stay_quiet(monkeypatch, caplog):
    monkeypatch.setattr(tlog, "bars_on_terminal", lambda: False)
    caplog.set_level(logging.DEBUG, logger="tinyshot")
    list(tlog.progress(range(50), desc="quick"))
    assert _lines(caplog, "quick", logging.INFO) == []


def test_on_a_terminal_a_bar_and_lines_only_at_debug(monkeypatch, caplog):
    monkeypatch.setattr(tlog, "PROGRESS_MIN_S", 0.0)
    monkeypatch.setattr(tlog, "bars_on_terminal", lambda: True)
    caplog.set_level(logging.DEBUG, logger="tinyshot")
    bar = tlog.progress(range(10), desc="gen", total=10)
    assert bar.bar is not None
    list(bar)
    assert _lines(caplog, "gen:", logging.INFO) == []
    assert len(_lines(caplog, "gen:", logging.DEBUG)) == 10
    caplog.clear()
    list(tlog.progress(range(10), desc="off", total=10, disable=True))
    assert caplog.records == []


def test_textual_inversion_reports_steps_and_loss_at_info(eager, caplog):
    from tinyshot.diffusion.config import SpecializeConfig
    from tinyshot.diffusion.model import build_tiny_diffusion_model
    from tinyshot.diffusion.textual_inversion import train_tokens

    caplog.set_level(logging.INFO, logger="tinyshot")
    m = build_tiny_diffusion_model(seed=6)
    lat = [torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))]
    train_tokens(m, lat, "a photo of an {}", SpecializeConfig(ti_steps=10, ti_lr=1e-2))
    lines = _lines(caplog, "textual inversion: step")
    assert len(lines) == 10
    assert re.match(r"textual inversion: step 5/10 \(50%\), loss \d\.\d{4}, \d+ s left", lines[4])


def test_weight_loading_says_one_line_and_draws_no_bar(tmp_path, capfd, caplog):
    import transformers.utils.logging as hf_logging

    from tinyshot.diffusion.model import build_tiny_diffusion_model, load_diffusion_model

    folder = build_tiny_diffusion_model(seed=1).save(tmp_path / "m")
    capfd.readouterr()
    caplog.set_level(logging.INFO, logger="tinyshot")
    assert hf_logging.is_progress_bar_enabled()
    load_diffusion_model(folder)
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err
    assert len(_lines(caplog, "loaded diffusion model m (cpu, float32) in")) == 1
    assert hf_logging.is_progress_bar_enabled()  # silenced only while tinyshot loads


def test_weight_loading_keeps_hub_download_bars():
    """Inside quiet_weight_loading transformers' and diffusers' per-weight bars are off, but
    huggingface_hub's download bars are on (a first run fetches GBs), and all is restored."""
    import diffusers.utils.logging as d_logging
    import huggingface_hub.utils as hub
    import transformers.utils.logging as t_logging

    from tinyshot.utils.logging import quiet_weight_loading

    assert not hub.are_progress_bars_disabled()
    with quiet_weight_loading():
        assert not hub.are_progress_bars_disabled()
        assert not hub.are_progress_bars_disabled("huggingface_hub.http_get")
        bar = hub.tqdm(total=1, disable=False, name="huggingface_hub.http_get")
        assert not bar.disable
        bar.close()
        assert not t_logging.is_progress_bar_enabled()
        assert not d_logging.is_progress_bar_enabled()
    assert not hub.are_progress_bars_disabled()
    assert t_logging.is_progress_bar_enabled() and d_logging.is_progress_bar_enabled()
    # a user's own choice to hide the hub's bars is kept, inside and after
    hub.disable_progress_bars()
    try:
        with quiet_weight_loading():
            assert hub.are_progress_bars_disabled()
        assert hub.are_progress_bars_disabled()
    finally:
        hub.enable_progress_bars()
