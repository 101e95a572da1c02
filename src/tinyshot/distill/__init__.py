"""Stage 3: pseudo-labelling and distillation of teacher knowledge into a tiny student."""
