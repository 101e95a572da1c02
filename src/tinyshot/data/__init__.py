"""Few-shot data: datasets with integer labels and class names, episodes, image transforms."""
