"""End-to-end jobs: `fit` on a user's ImageFolder, the offline `demo`, and benchmarks."""
