"""Stage 4: episodic evaluation, Theorem-1 statistics, data-quality (Frechet) metrics."""
