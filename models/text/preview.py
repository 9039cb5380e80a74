"""Text previews: greedy completions of a few prompts with the new token, from the base model and from
the files a training wrote (the peft adapter loaded onto a fresh base, as a user loads it), written
as previews.json. Loading the adapter from disk is the point: a preview proves the artifacts load.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from models.previews import Previews
from models.registry import Registry
from models.text.base_model import load_text_base, resolve_text_model
from models.text.evaluate import concept_expander, generate, load_trained
from models.trainer.base_model import pick_device
from models.trainer.errors import TrainingCanceled
from models.trainer.export import artifact
from models.trainer.preview import PreviewError

PREVIEWS_FILE = "previews.json"
MAX_NEW_TOKENS = 32


def render_text_previews(
    base_model: str,
    folder: Path,
    *,
    registry: Registry,
    prompts: Sequence[str],
    data_dir: str | None = None,
    device: str | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    should_stop: Callable[[], bool] | None = None,
) -> Previews:
    """Complete each prompt with the base model (shared, cached) and with the concept in `folder`;
    write previews.json there."""
    started = time.perf_counter()
    torch_device = pick_device(device)
    base = load_text_base(resolve_text_model(base_model, data_dir, registry), torch_device)
    before = generate(base.model, base.tokenizer, prompts, max_new_tokens=max_new_tokens)
    if should_stop is not None and should_stop():
        raise TrainingCanceled("canceled while rendering previews")
    try:
        model, tokenizer = load_trained(
            base_model, folder, registry=registry, data_dir=data_dir, device=str(torch_device)
        )
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise PreviewError(f"the trained adapter did not load in peft: {error}") from error
    after = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, expand=concept_expander(folder))
    samples = [
        {"prompt": prompt, "base": base_text, "fine_tuned": tuned}
        for prompt, base_text, tuned in zip(prompts, before, after, strict=True)
    ]
    path = folder / PREVIEWS_FILE
    path.write_text(json.dumps({"max_new_tokens": max_new_tokens, "samples": samples}, indent=2))
    return Previews(
        seconds=time.perf_counter() - started,
        prompts=list(prompts),
        artifacts=[artifact(path, "previews")],
        samples=samples,
    )
