"""Training: a zip of images and captions becomes a LoRA (dataset, config, trainer, jobs)."""
