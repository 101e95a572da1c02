"""Stage 1: specialize a text-to-image diffusion model (TI + NTI) and generate synthetic images."""
