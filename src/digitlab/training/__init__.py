"""Training: the loop and its checkpoints, augmentation, distributed runs, clean stops and ensembles."""
