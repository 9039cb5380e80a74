"""LEAP for language models: textual inversion, LoRA and pivotal tuning of a causal LM."""
