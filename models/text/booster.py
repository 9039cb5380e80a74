"""The text booster: a few example texts -> the new token's starting embedding, read by the frozen base.

Two readers propose candidate starts, and the job's own loss picks one of them (`TextBooster.start`):

- retrieval: the frozen base reads each example with the token replaced by a neutral word and a
  probe appended that asks for a word ("... is another word for \""); the log-probabilities of the
  base model's whole-word tokens after each probe, minus their average over training words' texts
  (calibration: without it "the", "a" and quotes win every time), are summed over the examples and
  probes. The top words' input embeddings, and their softmax-weighted mean, are candidates.
- regression: an À La Carte-style reader (Khodak et al. 2018): each example is read by the frozen base model
with the concept token replaced by a neutral word (READ_WORD), and a probe sentence appended that
asks which word it stood for. Three hidden states per example, averaged over the examples:

  before  final-normed state just before the placeholder (the model's guess from the left context)
  probe   final-normed state at the probe's end (its guess after reading the whole text)
  middle  a middle layer's state at the placeholder (what the context made of the neutral word)

With tied embeddings the final-normed states live in the embedding space already; a ridge
regression (a linear map + bias over standardised features) fitted on the base model's own
vocabulary maps them to the word's input embedding; the prediction is one more candidate.

Each candidate is scored by the trainer's scorer: the loss on the examples the booster was given,
with the job's token set to it; the lowest wins. It is stored beside a JSON file naming the
base model, its fingerprint and dimensions; a different base model is refused (BaseModelError).

The booster predicts one vector; a job with num_vectors > 1 starts every vector from it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.enums import Kind
from models.registry import Registry
from models.text.base_model import TextBase, text_fingerprint
from models.text.config import TextTrainConfig
from models.text.examples import TextExample
from models.text.meta_booster import checked_meta_booster, has_meta_booster
from models.trainer.errors import BaseModelError, foreign_booster

# The job's mean loss on `examples` with its token's vectors set to `vector` ([width]); the trainer
# builds it from the job's own forward hooks, so a booster can score candidate starts.
StartScorer = Callable[[torch.Tensor, Sequence[TextExample]], float]

# A booster resolver maps (base, examples, config, scorer) to initial token vectors [num_vectors, width]
# with a note, or None when no text booster is registered for the base model. text_booster_resolver
# builds the real one from a registry; the text trainer gets it from its caller (None: no booster).
TextBoosterResolver = Callable[
    [TextBase, Sequence[TextExample], TextTrainConfig, StartScorer], "tuple[torch.Tensor, str] | None"
]

CONFIG_FILE = "booster.json"
WEIGHTS_FILE = "booster.safetensors"
READ_WORD = "something"
PROBE = '\nIn the text above, "{read}" stands for the word'
FEATURES = ("before", "probe", "middle")
# (word standing in for the token, probe): each asks for one word after an opening quote.
RETRIEVAL_PROBES = (
    ("something", '\nIn the text above, "something" is another word for "'),
    ("___", '\nThe missing word (___) in the text above is "'),
    ("it", '\nOne word for what this text is about: "'),
)
RETRIEVED_WORDS = 16


@dataclass
class TextBoosterConfig:
    """Stored beside the weights; loading checks it against the base model."""

    base_model: str
    base_fingerprint: str
    embedding_width: int
    num_layers: int
    vocab_size: int
    middle_layer: int
    read_word: str = READ_WORD
    probe: str = PROBE
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    ridge: float = 1.0
    retrieval_probes: list[list[str]] = field(default_factory=list)
    retrieval_vocabulary: int = 0
    """How many whole-word token ids retrieval ranks (0: no retrieval, the regression alone)."""
    retrieved_words: int = RETRIEVED_WORDS
    num_vectors_note: str = "predicts one vector; a job with num_vectors > 1 starts every vector from it"
    training: dict = field(default_factory=dict)
    """How it was trained: words, examples per read, timings, validation figures."""


def default_middle_layer(base: TextBase) -> int:
    return int(base.model.config.num_hidden_layers) * 2 // 3


def _read_text(example: TextExample, token: str) -> str:
    return example.full_text.replace(token, READ_WORD)


@torch.no_grad()
def read_examples(
    base: TextBase, examples: Sequence[TextExample], *, token: str, middle_layer: int, batch_size: int = 32
) -> torch.Tensor:
    """Per-example features [examples, 3 * width] from the frozen base (see the module docstring)."""
    tokenizer = base.tokenizer
    probe = PROBE.format(read=READ_WORD)
    rows: list[tuple[list[int], int]] = []
    for example in examples:
        raw = example.full_text
        cut = raw.find(token)
        text = _read_text(example, token) + probe
        encoding = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        ids = list(encoding.input_ids)
        if cut < 0:  # no placeholder: the probe's end stands in for it
            position = len(ids) - 1
        else:
            position = next((i for i, (s, e) in enumerate(encoding.offset_mapping) if e > cut), len(ids) - 1)
        rows.append((ids, position))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    out = []
    body = base.model.get_decoder() if hasattr(base.model, "get_decoder") else base.model.model
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        batch_ids = torch.tensor([r + [pad] * (width - len(r)) for r, _ in chunk], device=base.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in chunk], device=base.device)
        result = body(input_ids=batch_ids, attention_mask=mask, output_hidden_states=True)
        final = result.last_hidden_state.float()  # already normed by the decoder's final norm
        middle = result.hidden_states[middle_layer].float()
        index = torch.arange(len(chunk), device=base.device)
        placeholder = torch.tensor([p for _, p in chunk], device=base.device)
        last = torch.tensor([len(r) - 1 for r, _ in chunk], device=base.device)
        before = final[index, (placeholder - 1).clamp(min=0)]
        out.append(torch.cat([before, final[index, last], middle[index, placeholder]], dim=-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def final_states(base: TextBase, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """The final-normed hidden state at each text's last token [texts, width] (right-padded batches)."""
    tokenizer = base.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    body = base.model.get_decoder() if hasattr(base.model, "get_decoder") else base.model.model
    encoded = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    out = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids in chunk)
        ids = torch.tensor([e + [pad] * (width - len(e)) for e in chunk], device=base.device)
        mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in chunk], device=base.device)
        hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        last = torch.tensor([len(e) - 1 for e in chunk], device=base.device)
        out.append(hidden[torch.arange(len(chunk), device=base.device), last].cpu())
    return torch.cat(out)


class TextBooster(torch.nn.Module):
    """Standardised averaged features -> one embedding vector (a linear map + bias), and the retrieval
    reader's vocabulary and calibration (see the module docstring)."""

    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    vocabulary_ids: torch.Tensor
    probe_prior: torch.Tensor

    def __init__(self, config: TextBoosterConfig) -> None:
        super().__init__()
        self.config = config
        features = len(config.features) * config.embedding_width
        self.register_buffer("feature_mean", torch.zeros(features))
        self.register_buffer("feature_std", torch.ones(features))
        self.linear = torch.nn.Linear(features, config.embedding_width)
        words = config.retrieval_vocabulary
        self.register_buffer("vocabulary_ids", torch.zeros(words, dtype=torch.long))
        self.register_buffer("probe_prior", torch.zeros(len(config.retrieval_probes), words))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [concepts, F] (averaged over each concept's examples) -> [concepts, width]."""
        return self.linear((features - self.feature_mean) / self.feature_std)

    @torch.no_grad()
    def fit(self, features: torch.Tensor, targets: torch.Tensor, ridge: float) -> None:
        """Closed-form ridge regression on standardised features (the bias is not penalised)."""
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp(min=1e-6))
        x = ((features - self.feature_mean) / self.feature_std).double()
        y = targets.double()
        y_mean = y.mean(0)
        gram = x.T @ x + ridge * len(x) * torch.eye(x.shape[1], dtype=torch.float64)
        weight = torch.linalg.solve(gram, x.T @ (y - y_mean))
        self.linear.weight.copy_(weight.T.float())
        self.linear.bias.copy_(y_mean.float())
        self.config.ridge = ridge

    def predict(self, base: TextBase, examples: Sequence[TextExample], token: str) -> torch.Tensor:
        """The regression's embedding [width] from a concept's examples."""
        features = read_examples(base, examples, token=token, middle_layer=self.config.middle_layer)
        with torch.no_grad():
            return self(features.mean(0, keepdim=True))[0]

    def _probe_log_probs(self, base: TextBase, examples: Sequence[TextExample], token: str) -> torch.Tensor:
        """[probes, examples, vocabulary]: log-probabilities of the retrieval vocabulary after each probe."""
        probes = self.config.retrieval_probes
        texts = [e.full_text.replace(token, fill) + probe for fill, probe in probes for e in examples]
        states = final_states(base, texts)
        head = base.model.get_output_embeddings()  # in the model's dtype: no float copy of a large head
        logits = head(states.to(base.device, head.weight.dtype)).float()
        rows = torch.log_softmax(logits, dim=-1)[:, self.vocabulary_ids.to(base.device)].cpu()
        return rows.reshape(len(probes), len(examples), -1)

    @torch.no_grad()
    def fit_retrieval(
        self, base: TextBase, vocabulary_ids: Sequence[int], concepts: Sequence[Sequence[TextExample]], token: str
    ) -> None:
        """The retrieval vocabulary and each probe's prior: its mean log-probabilities over `concepts`' texts."""
        self.config.retrieval_probes = [list(p) for p in RETRIEVAL_PROBES]
        self.config.retrieval_vocabulary = len(vocabulary_ids)
        self.vocabulary_ids = torch.tensor(list(vocabulary_ids), dtype=torch.long)
        total = torch.zeros(len(RETRIEVAL_PROBES), len(vocabulary_ids))
        count = 0
        for examples in concepts:
            rows = self._probe_log_probs(base, examples, token)
            total += rows.sum(1)
            count += rows.shape[1]
        self.probe_prior = total / max(count, 1)

    @torch.no_grad()
    def retrieve(self, base: TextBase, examples: Sequence[TextExample], token: str) -> tuple[list[int], torch.Tensor]:
        """The top retrieved token ids and their calibrated scores (summed over probes and examples)."""
        if not self.config.retrieval_vocabulary or not examples:
            return [], torch.zeros(0)
        rows = self._probe_log_probs(base, examples, token)
        scores = (rows - self.probe_prior[:, None, :]).sum((0, 1))
        top = scores.topk(min(self.config.retrieved_words, len(scores)))
        return self.vocabulary_ids[top.indices].tolist(), top.values

    def start(
        self,
        base: TextBase,
        examples: Sequence[TextExample],
        token: str,
        score: StartScorer,
        extra: Sequence[tuple[str, Sequence[tuple[torch.Tensor, list[int]]]]] = (),
    ) -> tuple[torch.Tensor, str]:
        """The candidate start [width] with the lowest loss on `examples`, and a note naming it.

        Candidates: the regression's prediction, the retrieved words' input embeddings and their
        softmax-weighted mean (weights from the retrieval scores), and `extra` (the meta booster's):
        per name, the vector from every example first, then vectors each scored on the examples it
        did not read (MetaBooster.predict_folds); with no folds the first is scored on them all."""
        candidates: list[tuple[str, torch.Tensor]] = [("regression", self.predict(base, examples, token).cpu())]
        held_out_losses: dict[int, float] = {}
        for name, folds in extra:
            if len(folds) > 1:
                counted = [(score(vector, [examples[i] for i in left]), len(left)) for vector, left in folds[1:]]
                held_out_losses[len(candidates)] = sum(loss * n for loss, n in counted) / sum(n for _, n in counted)
            candidates.append((name, folds[0][0].cpu()))
        ids, scores = self.retrieve(base, examples, token)
        if ids:
            weight = base.model.get_input_embeddings().weight
            rows = weight[torch.tensor(ids, device=weight.device)].detach().float().cpu()
            candidates.append(("retrieval blend", (torch.softmax(scores, 0)[:, None] * rows).sum(0)))
            candidates += [(f"word {base.tokenizer.decode([i])!r}", row) for i, row in zip(ids, rows, strict=True)]
        losses = [
            held_out_losses[i] if i in held_out_losses else score(vector, examples)
            for i, (_, vector) in enumerate(candidates)
        ]
        best = min(range(len(candidates)), key=lambda i: losses[i])
        name, vector = candidates[best]
        note = (
            f"booster start: {name} (loss {losses[best]:.4f} on the examples"
            f"{' it did not read' if best in held_out_losses else ''}; the regression's {losses[0]:.4f}; "
            f"{len(candidates)} candidates)"
        )
        return vector, note


def new_text_booster(base: TextBase, base_model: str) -> TextBooster:
    """An unfitted booster for this base model."""
    config = base.model.config
    return TextBooster(
        TextBoosterConfig(
            base_model=base_model,
            base_fingerprint=text_fingerprint(base),
            embedding_width=base.width,
            num_layers=int(config.num_hidden_layers),
            vocab_size=int(base.model.get_input_embeddings().weight.shape[0]),
            middle_layer=default_middle_layer(base),
        )
    )


def save_text_booster(booster: TextBooster, directory: Path) -> list[Path]:
    """booster.safetensors + booster.json."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().float().contiguous() for k, v in booster.state_dict().items()}
    save_file(weights, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(booster.config), indent=2) + "\n")
    return [directory / WEIGHTS_FILE, directory / CONFIG_FILE]


def load_text_booster(directory: Path) -> TextBooster:
    """Read a booster folder (no base-model check: see checked_text_booster)."""
    try:
        config = TextBoosterConfig(**json.loads((Path(directory) / CONFIG_FILE).read_text()))
        state = load_file(str(Path(directory) / WEIGHTS_FILE))
    except (OSError, ValueError, TypeError) as error:
        raise BaseModelError(f"cannot read the text booster in {directory}: {error}") from error
    booster = TextBooster(config)
    if not config.retrieval_vocabulary:  # a regression-only booster (stored before retrieval) has no such buffers
        state = {"vocabulary_ids": booster.vocabulary_ids, "probe_prior": booster.probe_prior, **state}
    booster.load_state_dict(state)
    booster.eval()
    return booster


_loaded: dict[Path, TextBooster] = {}
_lock = threading.Lock()


def checked_text_booster(directory: Path, base: TextBase) -> TextBooster:
    """Load (once) a booster and make sure it was trained for this exact base model."""
    with _lock:
        if directory not in _loaded:
            _loaded[directory] = load_text_booster(directory)
        booster = _loaded[directory]
    config = booster.config
    if config.embedding_width != base.width:
        raise BaseModelError(
            f"text booster {directory} was trained for {config.base_model} (embedding width "
            f"{config.embedding_width}); this base model's width is {base.width}"
        )
    fingerprint = text_fingerprint(base)
    if config.base_fingerprint != fingerprint:
        raise BaseModelError(
            f"text booster {directory} was trained for {config.base_model} (fingerprint {config.base_fingerprint}), "
            f"a different base model than {base.source} (fingerprint {fingerprint})"
        )
    return booster


def registered_text_booster_path(base: TextBase, base_model: str, registry: Registry) -> Path | None:
    """The booster folder registered for a text model, by registry id or by its (converted) folder."""
    entry = registry.get(base_model)
    if entry is None:
        entry = next((m for m in registry.models.values() if m.kind == Kind.TEXT and m.path == base.source), None)
    if entry is None or entry.kind != Kind.TEXT or not entry.has_booster:
        return None
    return entry.booster_path


def text_booster_vectors(
    base: TextBase, examples: Sequence[TextExample], config: TextTrainConfig, score: StartScorer, registry: Registry
) -> tuple[torch.Tensor, str] | None:
    """The registered booster's start for a job ([num_vectors, width], note), or None without one."""
    directory = registered_text_booster_path(base, config.base_model, registry)
    if directory is None:
        return None
    try:
        booster = checked_text_booster(directory, base)
    except BaseModelError as error:
        raise foreign_booster(error, what="text booster", base_model=config.base_model) from error
    extra = []
    if has_meta_booster(directory):  # the meta-learned booster's prediction is one more candidate
        try:
            meta = checked_meta_booster(directory, base)
        except BaseModelError as error:
            raise foreign_booster(error, what="text booster", base_model=config.base_model) from error
        extra.append(("meta booster", meta.predict_folds(base, examples, config.token)))
    vector, note = booster.start(base, examples, config.token, score, extra)
    if config.num_vectors > 1:
        note += f"; the booster {booster.config.num_vectors_note}"
    return vector.expand(config.num_vectors, -1).clone(), note


def text_booster_resolver(registry: Registry) -> TextBoosterResolver:
    """The text trainer's `booster_resolver`: the text booster `registry` registers for a job's base model."""
    return partial(text_booster_vectors, registry=registry)
