"""The meta-learned text booster (CoLLEGe-style): support examples -> the new token's embedding.

A small network reads a concept's example texts through the frozen base model and outputs the
new token's input embedding (Teehan, Lake & Ren 2024, "CoLLEGe: Concept Embedding Generation for
Large Language Models"). It is trained end to end through the frozen LM: the predicted vector is
written into *other* texts about the same concept (query texts) and the LM's loss on them is what
training lowers (`models/text/meta_booster_train.py`).

Reading (frozen, no gradient, so it can be cached while training): each support text has the
concept token masked by a neutral word (MASK_WORD: the new token itself never reaches the base
model, whose table has no row for it), and PROBE appended, which asks for the word the mask stood
for. Four states per text, each [width]:

  before       final-normed state just before the mask (what the left context predicts there)
  probe        final-normed state at the probe's end (the model's guess after the whole text)
  probe_mid    a middle layer's state at the probe's end
  after_mid    a middle layer's states averaged over the text after the mask (what it says about it)

Each support text's own tokens (the mask and the probe left out) are kept too: their middle-layer
states and their ids.

The head: per text, a linear map to `hidden` + LayerNorm + GELU; one self-attention block across
the support texts (a set: no positions); a mean over them; an MLP to the embedding, added to the
vocabulary's mean embedding. A pointer adds the words the examples use: `pointer_heads` attention
heads score every token of every support text (from its middle-layer state and the concept's
summary), and each head's softmax-weighted mean of those tokens' input embeddings (less the mean
embedding) joins the output with a learned weight. A made-up word described as "a small glowing
fish kept in ponds" can so start near " fish", " glow" and " pond" together, which no single
vocabulary row and no map of pooled states reaches. Untied models get a second output, the
output-head row.

Stored as meta_booster.safetensors (float16) + meta_booster.json (base model, fingerprint, width,
vocabulary, the reader's settings and how it was trained) beside the retrieval/ridge booster; a
different base model is refused with BaseModelError.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.text.base_model import TextBase, text_fingerprint
from models.text.examples import TextExample
from models.trainer.errors import BaseModelError

CONFIG_FILE = "meta_booster.json"
WEIGHTS_FILE = "meta_booster.safetensors"
MASK_WORD = "something"
PROBE = '\nIn the text above, "something" stands for the word'
FEATURES = ("before", "probe", "probe_mid", "after_mid")
MAX_TOKENS = 40
"""Tokens of a support text the pointer reads (its first ones; frames and short examples fit)."""
HELD_OUT_FOLDS = 4
"""Folds of a job's examples for scoring the prediction on examples it did not read."""


@dataclass
class MetaBoosterConfig:
    """Stored beside the weights; loading checks it against the base model."""

    base_model: str
    base_fingerprint: str
    embedding_width: int
    vocab_size: int
    num_layers: int
    middle_layer: int
    tied: bool
    hidden: int = 256
    heads: int = 4
    pointer_heads: int = 4
    mask_word: str = MASK_WORD
    probe: str = PROBE
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    training: dict = field(default_factory=dict)
    """How it was trained: concepts, steps, timings, validation losses."""


@dataclass(frozen=True)
class SupportRead:
    """One support text prepared for the frozen reader: ids with the mask, and the positions read."""

    ids: list[int]
    mask_position: int
    """The first token of the masked concept (the probe's end when the text has no concept token)."""
    probe_start: int
    words: list[int]
    """Positions of the text's own tokens (not the mask's, not the probe's): what the pointer reads."""


def prepare_support(tokenizer, text: str, token: str, *, mask_word: str = MASK_WORD, probe: str = PROBE) -> SupportRead:
    """Mask every `token` in `text` by `mask_word` and append the probe (token ids, positions read)."""
    pieces = text.split(token)
    body = mask_word.join(pieces)
    masks, at = [], 0  # character spans of the mask word in `body`
    for piece in pieces[:-1]:
        at += len(piece)
        masks.append((at, at + len(mask_word)))
        at += len(mask_word)
    encoding = tokenizer(body + probe, return_offsets_mapping=True, add_special_tokens=False)
    ids = list(encoding.input_ids)
    offsets = encoding.offset_mapping
    probe_start = next((i for i, (s, e) in enumerate(offsets) if e > len(body)), len(ids) - 1)
    # No concept token in the text: the probe's end stands in for the mask.
    first = masks[0][0] if masks else -1
    position = len(ids) - 1 if first < 0 else next((i for i, (s, e) in enumerate(offsets) if e > first), len(ids) - 1)
    words = [
        i
        for i, (s, e) in enumerate(offsets[:probe_start])
        if e > s and not any(s < m_end and e > m_start for m_start, m_end in masks)
    ]
    return SupportRead(ids=ids, mask_position=position, probe_start=probe_start, words=words[:MAX_TOKENS])


@dataclass
class Support:
    """What the head reads of some support texts: pooled states, and each text's own tokens."""

    pooled: torch.Tensor
    """[..., texts, 4 * width] (FEATURES)"""
    states: torch.Tensor
    """[..., texts, tokens, width] middle-layer states of the text's own tokens (zeros past `mask`)"""
    ids: torch.Tensor
    """[..., texts, tokens] their token ids"""
    mask: torch.Tensor
    """[..., texts, tokens] which tokens are real"""

    def map(self, function: Callable[[torch.Tensor], torch.Tensor]) -> Support:
        """The same function of every field (an index over texts, a device move, a reshape)."""
        return Support(function(self.pooled), function(self.states), function(self.ids), function(self.mask))

    def take(self, concepts: Sequence[int], supports: Sequence[Sequence[int]]) -> Support:
        """Per concept index, the given texts: [concepts, texts, ...] (one support size for all)."""
        return self.map(lambda x: torch.stack([x[c, list(s)] for c, s in zip(concepts, supports, strict=True)]))


def _body(base: TextBase):
    return base.model.get_decoder() if hasattr(base.model, "get_decoder") else base.model.model


@torch.no_grad()
def read_support(
    base: TextBase,
    texts: Sequence[str],
    token: str,
    *,
    middle_layer: int,
    mask_word: str = MASK_WORD,
    probe: str = PROBE,
    batch_size: int = 32,
) -> Support:
    """What the head reads of `texts`, from the frozen base (see the module docstring)."""
    tokenizer = base.tokenizer
    reads = [prepare_support(tokenizer, t, token, mask_word=mask_word, probe=probe) for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    out = []
    tokens = max(1, max(len(r.words) for r in reads))
    token_states = torch.zeros(len(reads), tokens, base.width, dtype=torch.float16)
    token_ids = torch.zeros(len(reads), tokens, dtype=torch.long)
    token_mask = torch.zeros(len(reads), tokens, dtype=torch.bool)
    for start in range(0, len(reads), batch_size):
        chunk = reads[start : start + batch_size]
        width = max(len(r.ids) for r in chunk)
        ids = torch.tensor([r.ids + [pad] * (width - len(r.ids)) for r in chunk], device=base.device)
        mask = torch.tensor([[1] * len(r.ids) + [0] * (width - len(r.ids)) for r in chunk], device=base.device)
        result = _body(base)(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        final = result.last_hidden_state.float()
        middle = result.hidden_states[middle_layer].float()
        rows = torch.arange(len(chunk), device=base.device)
        position = torch.tensor([r.mask_position for r in chunk], device=base.device)
        last = torch.tensor([len(r.ids) - 1 for r in chunk], device=base.device)
        # The text after the mask, up to the probe (the mask itself when nothing follows it).
        span = torch.arange(width, device=base.device)[None]
        after = (span > position[:, None]) & (span < torch.tensor([r.probe_start for r in chunk])[:, None])
        after = torch.where(after.any(1, keepdim=True), after, span == position[:, None]).float()
        after_mean = (middle * after[..., None]).sum(1) / after.sum(1, keepdim=True)
        out.append(
            torch.cat(
                [final[rows, (position - 1).clamp(min=0)], final[rows, last], middle[rows, last], after_mean], -1
            ).cpu()
        )
        for offset, read in enumerate(chunk):
            row, count = start + offset, len(read.words)
            token_states[row, :count] = middle[offset, read.words].half().cpu()
            token_ids[row, :count] = torch.tensor(read.ids, dtype=torch.long)[read.words]
            token_mask[row, :count] = True
    return Support(torch.cat(out), token_states, token_ids, token_mask)


class MetaBooster(torch.nn.Module):
    """Support [concepts, texts, ...] + the embeddings of its tokens -> the token's input embedding
    [concepts, width] (and, untied, its output-head row)."""

    embedding_mean: torch.Tensor
    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(self, config: MetaBoosterConfig) -> None:
        super().__init__()
        self.config = config
        width, hidden = config.embedding_width, config.hidden
        features = len(config.features) * width
        outputs = 1 if config.tied else 2
        self.register_buffer("embedding_mean", torch.zeros(outputs * width))
        self.register_buffer("feature_mean", torch.zeros(features))
        self.register_buffer("feature_std", torch.ones(features))
        self.encode = torch.nn.Sequential(
            torch.nn.Linear(features, hidden), torch.nn.LayerNorm(hidden), torch.nn.GELU()
        )
        self.mix = torch.nn.TransformerEncoderLayer(
            hidden, config.heads, dim_feedforward=2 * hidden, dropout=0.0, batch_first=True, norm_first=True
        )
        last = torch.nn.Linear(hidden, outputs * width)
        torch.nn.init.zeros_(last.weight)  # starts at the mean embedding
        torch.nn.init.zeros_(last.bias)
        self.out = torch.nn.Sequential(
            torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, hidden), torch.nn.GELU(), last
        )
        pointers = config.pointer_heads
        self.point_token = torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, hidden))
        self.point_query = torch.nn.Linear(hidden, hidden)
        self.point_score = torch.nn.Linear(hidden, pointers)
        self.point_weight = torch.nn.Parameter(torch.zeros(pointers))  # starts at the mean embedding too

    def forward(self, support: Support, embeddings: torch.Tensor) -> torch.Tensor:
        """support [concepts, texts, ...], embeddings [concepts, texts, tokens, width] (the input rows of
        support.ids) -> [concepts, outputs * width] (input row, then output row)."""
        x = self.encode((support.pooled - self.feature_mean) / self.feature_std)
        summary = self.mix(x).mean(1)
        out = self.embedding_mean + self.out(summary)
        if self.config.pointer_heads == 0:
            return out
        concepts, width = len(summary), self.config.embedding_width
        states = self.point_token(support.states.float()) + self.point_query(summary)[:, None, None]
        scores = self.point_score(torch.nn.functional.gelu(states)).reshape(concepts, -1, self.config.pointer_heads)
        real = support.mask.reshape(concepts, -1, 1)
        weights = torch.softmax(scores.masked_fill(~real, float("-inf")), 1).nan_to_num(0.0)
        rows = embeddings.reshape(concepts, -1, width).float() - self.embedding_mean[:width]
        picked = torch.einsum("cnh,cnw->chw", weights * real, rows)
        return torch.cat([out[:, :width] + (self.point_weight[:, None] * picked).sum(1), out[:, width:]], 1)

    def predict(self, base: TextBase, examples: Sequence[TextExample], token: str) -> torch.Tensor:
        """The input embedding [width] for a concept's examples (each read whole, prompt + completion)."""
        return self.predict_folds(base, examples, token, folds=0)[0][0]

    def predict_folds(
        self, base: TextBase, examples: Sequence[TextExample], token: str, *, folds: int = HELD_OUT_FOLDS
    ) -> list[tuple[torch.Tensor, list[int]]]:
        """The prediction from all examples (with no indices), then, for each of up to `folds` folds,
        the prediction from the other examples and the indices of those it did not read.

        The examples are read once; a fold only reruns the head. A job scores the prediction on the
        examples a fold left out: a vector that read an example fits it better than it fits the concept,
        so scoring it on what it read would favour it over the retrieval booster's candidates."""
        support = read_support(
            base,
            [e.full_text for e in examples],
            token,
            middle_layer=self.config.middle_layer,
            mask_word=self.config.mask_word,
            probe=self.config.probe,
        ).map(lambda x: x[None])  # one concept
        table = base.model.get_input_embeddings().weight
        embeddings = table[support.ids.to(table.device)].detach().float().cpu()
        count = len(examples)
        groups = [[i for i in range(count) if i % folds == f] for f in range(min(folds, count))] if count > 1 else []
        out = []
        with torch.no_grad():
            for left_out in [[], *groups]:
                kept = [i for i in range(count) if i not in left_out]
                vector = self(support.take([0], [kept]), embeddings[:, kept])[0, : self.config.embedding_width]
                out.append((vector, left_out))
        return out


def new_meta_booster(
    base: TextBase, base_model: str, *, hidden: int = 256, heads: int = 4, pointer_heads: int = 4
) -> MetaBooster:
    """An untrained meta booster for this base model (its output starts at the mean embedding)."""
    config = base.model.config
    layers = int(config.num_hidden_layers)
    booster = MetaBooster(
        MetaBoosterConfig(
            base_model=base_model,
            base_fingerprint=text_fingerprint(base),
            embedding_width=base.width,
            vocab_size=int(base.model.get_input_embeddings().weight.shape[0]),
            num_layers=layers,
            middle_layer=layers * 2 // 3,
            tied=base.tied,
            hidden=hidden,
            heads=heads,
            pointer_heads=pointer_heads,
        )
    )
    with torch.no_grad():
        rows = [base.model.get_input_embeddings().weight.float().mean(0)]
        if not base.tied:
            rows.append(base.model.get_output_embeddings().weight.float().mean(0))
        booster.embedding_mean.copy_(torch.cat(rows).cpu())
    return booster


def save_meta_booster(booster: MetaBooster, directory: Path) -> list[Path]:
    """meta_booster.safetensors (float16: half the size, no measurable change in the start) + .json."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().half().contiguous() for k, v in booster.state_dict().items()}
    save_file(weights, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(booster.config), indent=2) + "\n")
    return [directory / WEIGHTS_FILE, directory / CONFIG_FILE]


def load_meta_booster(directory: Path) -> MetaBooster:
    """Read a meta booster folder (no base-model check: see checked_meta_booster)."""
    try:
        config = MetaBoosterConfig(**json.loads((Path(directory) / CONFIG_FILE).read_text()))
        state = {k: v.float() for k, v in load_file(str(Path(directory) / WEIGHTS_FILE)).items()}
        booster = MetaBooster(config)
        booster.load_state_dict(state)
    except (OSError, ValueError, TypeError, RuntimeError) as error:
        raise BaseModelError(f"cannot read the text meta booster in {directory}: {error}") from error
    booster.eval()
    return booster


def has_meta_booster(directory: Path) -> bool:
    return (Path(directory) / CONFIG_FILE).is_file()


_loaded: dict[Path, MetaBooster] = {}
_lock = threading.Lock()


def checked_meta_booster(directory: Path, base: TextBase) -> MetaBooster:
    """Load (once) a meta booster and make sure it was trained for this exact base model."""
    with _lock:
        if directory not in _loaded:
            _loaded[directory] = load_meta_booster(directory)
        booster = _loaded[directory]
    config = booster.config
    if config.embedding_width != base.width or config.tied != base.tied:
        raise BaseModelError(
            f"text meta booster {directory} was trained for {config.base_model} (embedding width "
            f"{config.embedding_width}, tied {config.tied}); this base model's width is {base.width}, tied {base.tied}"
        )
    fingerprint = text_fingerprint(base)
    if config.base_fingerprint != fingerprint:
        raise BaseModelError(
            f"text meta booster {directory} was trained for {config.base_model} (fingerprint "
            f"{config.base_fingerprint}), a different base model than {base.source} (fingerprint {fingerprint})"
        )
    return booster
