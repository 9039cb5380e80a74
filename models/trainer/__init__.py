"""Pivotal tuning (textual inversion + LoRA) for diffusers Stable Diffusion pipelines.

Import the heavy parts from their modules (`models.trainer.train`); this package
root stays free of torch so the API process can use `models.trainer.images`.
"""
