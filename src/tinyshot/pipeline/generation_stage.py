"""Stage 1 of an episode: specialize the generator on the supports (TI + NTI, and/or LoRA,
only when a requested generator needs them), then generate each requested generator's
synthetic store. All resume from their files under the work folder (specialize/, lora/,
synthetic/<gen>/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyshot.pipeline.config import (
    LORA_GENERATORS,
    SPECIALIZED,
    PipelineConfig,
    resolve_generator,
    store_size,
)
from tinyshot.pipeline.episode_data import EpisodeData
from tinyshot.utils.seed import derive_seed
from tinyshot.utils.timing import StageTimes


def specialize_and_generate(
    data: EpisodeData, config: PipelineConfig, work_dir: Path, seed: int
) -> dict[str, Any]:
    """Stage 1: TINT specialization, then each requested generator's synthetic set."""
    from tinyshot.diffusion.config import SpecializeConfig
    from tinyshot.diffusion.generate import generate, generate_from_names
    from tinyshot.diffusion.lora import LoraTrainConfig, specialize_lora
    from tinyshot.diffusion.model import load_diffusion_model
    from tinyshot.diffusion.specialize import specialize

    stores: dict[str, Any] = {}
    if not config.generators:
        return stores
    model = load_diffusion_model(resolve_generator(config.generator), device=config.device)
    spec_cfg = SpecializeConfig.from_dict(
        {**config.specialize, "seed": derive_seed(seed, "spec") % 2**31}
    )
    times = StageTimes(work_dir)  # summed over attempts: a resumed run reports the total
    artifacts = None
    if any(g in SPECIALIZED for g in config.generators):
        with times.stage("specialize_s"):
            artifacts = specialize(
                model, data.support_pil, data.class_names, spec_cfg, work_dir / "specialize"
            )
    lora_gens = [g for g in config.generators if g in LORA_GENERATORS]
    if lora_gens:
        lora_cfg = LoraTrainConfig.from_dict(
            {**config.lora, "seed": derive_seed(seed, "lora") % 2**31}
        )
        with times.stage("specialize_lora_s"):
            specialize_lora(
                model, data.support_pil, data.class_names, lora_cfg, work_dir / "lora",
                sampling=spec_cfg, invert="lora-tint" in lora_gens,
            )  # fmt: skip
    keep = store_size(config)
    common = dict(
        n_per_class=config.synthetic_per_class,
        batch_size=config.generation_batch_size,
        seed=derive_seed(seed, "generate") % 2**31,
        store_size=keep,
    )
    for gen in config.generators:
        with times.stage(f"generate_{gen}_s"):
            out = work_dir / "synthetic" / gen
            if gen == "name":
                stores[gen] = generate_from_names(
                    model,
                    data.class_names,
                    out_dir=out,
                    guidance=spec_cfg.guidance,
                    steps=spec_cfg.num_inference_steps,
                    timestep_spacing=spec_cfg.timestep_spacing,
                    **common,
                )
            else:  # a LoRA method samples the LoRA folder, the others TI's artifacts
                source = work_dir / "lora" if gen in LORA_GENERATORS else artifacts
                assert source is not None
                stores[gen] = generate(
                    model, source, gen, out_dir=out, alpha=config.alpha, **common
                )
    totals = times.totals()
    keys = [
        *(["specialize_s"] if artifacts is not None else []),
        *(["specialize_lora_s"] if lora_gens else []),
        *(f"generate_{g}_s" for g in config.generators),
    ]
    stores["_timings"] = {k: totals.get(k, 0.0) for k in keys}
    return stores
