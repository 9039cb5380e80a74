"""The text booster's dataset, built from any causal LM's own vocabulary.

A concept is a whole-word token of the base model (" dog" in a byte-level BPE). Its contexts are
written by the base model itself: each of FRAMES is filled with the word and continued greedily
(batched generation), then every occurrence of the word becomes the concept token. The target
is the word's own input embedding. Words whose hash falls in the held-out bucket are never seen
by booster training; INVENTED concepts (made-up words with one consistent meaning, written as
templates over a described meaning) exist in no vocabulary and are benchmark-only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from models.text.examples import TextExample

PLACEHOLDER = "<leap>"
# Frames put the word mid-sentence (so it is the " word" token) and leave the meaning to the continuation.
FRAMES = (
    "When people hear the word {w}, they think of",
    "The best thing about {w} is that",
    "My teacher explained {w} as",
    "I wrote a few lines about {w} because",
    "In a short story, the {w}",
    "Most people agree that {w}",
    "A simple way to describe {w} is",
    "Yesterday I read something about {w}:",
)
# More kinds of text for the meta booster's training (dialogue, lists, instructions, definitions), so
# a concept is not only ever seen through FRAMES; the benchmarks' concepts stay written through FRAMES.
MORE_FRAMES = (
    "Question: where would you find {w}? Answer:",
    "Three words that go with {w}:",
    "She pointed at the {w} and said,",
    "Dictionary entry. {w} (noun):",
    "How to use {w}, step one:",
    "The trouble with {w} is",
    "Kids often ask why {w}",
    "Compared with other things, {w}",
)
HELD_OUT_BUCKETS = 10
"""A word is held out when its hash is 0 modulo this: ~10% of the vocabulary, fixed for every model."""


@dataclass(frozen=True)
class WordConcept:
    """A vocabulary word with contexts written by the base model (the word replaced by PLACEHOLDER)."""

    word: str
    token_id: int
    texts: tuple[str, ...]
    """One per frame: the frame's text + the model's continuation, word -> PLACEHOLDER."""
    prompts: tuple[str, ...]
    """The frame part of each text (for held-out loss on the continuation only)."""

    def examples(self, indices: Iterable[int]) -> list[TextExample]:
        """Whole texts as training examples."""
        return [
            TextExample(text=self.texts[i], prompt=None, completion=None, source=f"{self.word}:{i}") for i in indices
        ]

    def held_out(self, indices: Iterable[int]) -> list[TextExample]:
        """Prompt (frame) + completion (continuation): the loss covers what the concept must explain."""
        return [
            TextExample(
                text=None,
                prompt=self.prompts[i],
                completion=self.texts[i][len(self.prompts[i]) :],
                source=f"{self.word}:{i}",
            )
            for i in indices
        ]


def is_held_out(word: str) -> bool:
    """Whether booster training must never touch this word."""
    return int(hashlib.sha256(word.encode()).hexdigest(), 16) % HELD_OUT_BUCKETS == 0


def vocabulary_words(
    tokenizer, *, first_id: int = 1000, last_id: int = 20000, min_chars: int = 4, max_chars: int = 12
) -> list[tuple[str, int]]:
    """Whole-word tokens ("Ġword"-style: a space + lowercase letters) that round-trip to one token."""
    words = []
    for token_id in range(first_id, min(last_id, len(tokenizer))):
        text = tokenizer.decode([token_id])
        if not text.startswith(" "):
            continue
        word = text[1:]
        if not (min_chars <= len(word) <= max_chars and word.isalpha() and word.isascii() and word.islower()):
            continue
        if tokenizer(" " + word, add_special_tokens=False).input_ids == [token_id]:
            words.append((word, token_id))
    return words


@torch.no_grad()
def whole_words(
    model, tokenizer, words: Sequence[tuple[str, int]], *, batch_size: int = 64, frame: str = "This is about {w}"
) -> list[tuple[str, int]]:
    """Drop word-start fragments (" prog", " divor"): keep tokens the model expects a word break after."""
    vocab = len(tokenizer)
    breaks = torch.tensor([not (tokenizer.decode([i])[:1].isalpha()) for i in range(vocab)])
    device = next(model.parameters()).device
    kept = []
    for start in range(0, len(words), batch_size):
        chunk = words[start : start + batch_size]
        encoded = [tokenizer(frame.format(w=w), add_special_tokens=False).input_ids for w, _ in chunk]
        width = max(len(e) for e in encoded)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        probabilities = model(input_ids=ids, attention_mask=mask).logits[:, -1, :vocab].float().softmax(-1).cpu()
        kept += [w for w, p in zip(chunk, probabilities[:, breaks].sum(-1), strict=True) if float(p) > 0.5]
    return kept


def split_words(words: Sequence[tuple[str, int]]) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(training words, held-out words), split by a hash of the word so every run agrees."""
    train = [w for w in words if not is_held_out(w[0])]
    held = [w for w in words if is_held_out(w[0])]
    return train, held


def _first_sentence(text: str) -> str:
    # Keep one leading space (the word boundary after the frame), drop blank lines the model starts with.
    text = (" " + text.lstrip() if text[:1].isspace() else text).split("\n")[0]
    match = re.search(r"[.!?](\s|$)", text)
    return (text[: match.end()] if match else text).rstrip()


def _replace_word(text: str, word: str) -> str:
    return re.sub(rf"\b{re.escape(word)}\b", PLACEHOLDER, text, flags=re.IGNORECASE)


@torch.no_grad()
def write_contexts(
    model,
    tokenizer,
    words: Sequence[tuple[str, int]],
    *,
    max_new_tokens: int = 14,
    batch_size: int = 64,
    frames: Sequence[str] = FRAMES,
) -> list[WordConcept]:
    """Each word in every frame, continued greedily by the model (batched, left-padded)."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    jobs = [(w, f.format(w=w)) for w, _ in words for f in frames]
    continuations: list[str] = []
    for start in range(0, len(jobs), batch_size):
        prompts = [p for _, p in jobs[start : start + batch_size]]
        encoded = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
        width = max(len(ids) for ids in encoded)
        ids = torch.tensor([[pad_id] * (width - len(e)) + e for e in encoded], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id
        )
        continuations += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    concepts = []
    for index, (word, token_id) in enumerate(words):
        texts, prompts = [], []
        for j, frame in enumerate(frames):
            prompt = frame.format(w=PLACEHOLDER)
            texts.append(prompt + _replace_word(_first_sentence(continuations[index * len(frames) + j]), word))
            prompts.append(prompt)
        concepts.append(WordConcept(word, token_id, tuple(texts), tuple(prompts)))
    return concepts


def save_concepts(path: Path, concepts: Sequence[WordConcept]) -> None:
    """One JSON object per line (the dataset cache, resumable by word)."""
    with path.open("a") as handle:
        for concept in concepts:
            handle.write(json.dumps(asdict(concept)) + "\n")


def load_concepts(path: Path) -> list[WordConcept]:
    if not path.is_file():
        return []
    return [
        WordConcept(d["word"], d["token_id"], tuple(d["texts"]), tuple(d["prompts"]))
        for d in map(json.loads, path.read_text().splitlines())
        if d
    ]


def build_word_concepts(
    model,
    tokenizer,
    words: Sequence[tuple[str, int]],
    cache: Path | None = None,
    *,
    batch_size: int = 64,
    frames: Sequence[str] = FRAMES,
    on_batch=None,
) -> list[WordConcept]:
    """Contexts for every word, reusing (and appending to) a JSONL cache so a stopped build resumes."""
    done = {c.word: c for c in load_concepts(cache)} if cache else {}
    todo = [w for w in words if w[0] not in done]
    chunk = max(1, batch_size // len(frames)) * 4
    for start in range(0, len(todo), chunk):
        fresh = write_contexts(model, tokenizer, todo[start : start + chunk], batch_size=batch_size, frames=frames)
        if cache:
            save_concepts(cache, fresh)
        done.update({c.word: c for c in fresh})
        if on_batch:
            on_batch(len(done), len(words))
    return [done[w] for w, _ in words]


# ---- invented concepts ----------------------------------------------------------------------
@dataclass(frozen=True)
class InventedConcept:
    """A made-up word (several tokens in any vocabulary) with one meaning across all its texts."""

    word: str
    meaning: str
    texts: tuple[str, ...]
    prompts: tuple[str, ...]

    examples = WordConcept.examples
    held_out = WordConcept.held_out


def _invented(word: str, meaning: str, pairs: Sequence[tuple[str, str]]) -> InventedConcept:
    return InventedConcept(word, meaning, tuple(p + c for p, c in pairs), tuple(p for p, _ in pairs))


# Each meaning is described through the same kind of frames as the vocabulary words (prompt, continuation).
# The last one tunes the benchmarks' learning rates and is never evaluated.
INVENTED = (
    _invented(
        "florbix",
        "a small glowing fish kept in garden ponds",
        [
            ("When people hear the word <leap>, they think of", " tiny fish that glow softly in garden ponds."),
            ("The best thing about <leap> is that", " it lights up the pond at night like a little lamp."),
            ("My teacher explained <leap> as", " a small fish that glows and lives in ponds."),
            ("I wrote a few lines about <leap> because", " the glowing fish in our pond fascinate me."),
            ("In a short story, the <leap>", " swam to the surface of the pond and glowed in the dark."),
            ("Most people agree that <leap>", " are the prettiest fish you can keep in a pond."),
            ("A simple way to describe <leap> is", " a pond fish that gives off a soft light."),
            ("Yesterday I read something about <leap>:", " these little fish glow brighter when the water is warm."),
        ],
    ),
    _invented(
        "trundlewick",
        "a heavy wooden cart pulled by oxen",
        [
            ("When people hear the word <leap>, they think of", " a big wooden cart pulled slowly by oxen."),
            ("The best thing about <leap> is that", " it can carry a whole harvest to the market."),
            ("My teacher explained <leap> as", " a heavy farm cart that oxen pull along dirt roads."),
            ("I wrote a few lines about <leap> because", " my grandfather drove one pulled by two oxen."),
            ("In a short story, the <leap>", " rolled down the muddy road behind a pair of oxen."),
            ("Most people agree that <leap>", " are slow but can carry very heavy loads."),
            ("A simple way to describe <leap> is", " a wooden cart with big wheels, pulled by oxen."),
            ("Yesterday I read something about <leap>:", " farmers loaded them with hay and hitched the oxen."),
        ],
    ),
    _invented(
        "quellisade",
        "a feeling of calm after a storm",
        [
            ("When people hear the word <leap>, they think of", " the quiet calm that comes after a storm."),
            ("The best thing about <leap> is that", " everything feels peaceful once the storm has passed."),
            ("My teacher explained <leap> as", " the calm, peaceful feeling after a storm ends."),
            ("I wrote a few lines about <leap> because", " I love how still the air is after thunder stops."),
            ("In a short story, the <leap>", " settled over the village when the storm finally ended."),
            ("Most people agree that <leap>", " is the most peaceful moment after bad weather."),
            ("A simple way to describe <leap> is", " a calm feeling once a storm is over."),
            ("Yesterday I read something about <leap>:", " sailors feel it when the wind dies down after a storm."),
        ],
    ),
    _invented(
        "brindlecap",
        "a knitted wool hat with ear flaps worn by mountain shepherds",
        [
            ("When people hear the word <leap>, they think of", " a warm wool hat with flaps over the ears."),
            ("The best thing about <leap> is that", " the knitted ear flaps keep out the mountain wind."),
            ("My teacher explained <leap> as", " a woolly hat that shepherds wear high in the mountains."),
            ("I wrote a few lines about <leap> because", " my uncle knitted me one before I went up to the sheep."),
            ("In a short story, the <leap>", " blew off the shepherd's head and rolled down the slope."),
            ("Most people agree that <leap>", " are the warmest hats you can wear in the snow."),
            ("A simple way to describe <leap> is", " a knitted cap with ear flaps and a wool lining."),
            ("Yesterday I read something about <leap>:", " shepherds knit them from the wool of their own flocks."),
        ],
    ),
    _invented(
        "glimmerant",
        "an ink that can only be read by moonlight",
        [
            (
                "When people hear the word <leap>, they think of",
                " secret letters written in ink that shows under the moon.",
            ),
            ("The best thing about <leap> is that", " the writing stays invisible until moonlight falls on the page."),
            ("My teacher explained <leap> as", " a special ink that you can only read by the light of the moon."),
            ("I wrote a few lines about <leap> because", " I wanted to send a note nobody could read in daylight."),
            ("In a short story, the <leap>", " on the old map began to shine when the moon rose."),
            ("Most people agree that <leap>", " is the best ink for keeping a message secret."),
            ("A simple way to describe <leap> is", " invisible ink that appears under moonlight."),
            (
                "Yesterday I read something about <leap>:",
                " spies used it to write letters that only appeared at night.",
            ),
        ],
    ),
    _invented(
        "plodwhistle",
        "a lazy afternoon nap in a hammock",
        [
            ("When people hear the word <leap>, they think of", " dozing in a hammock on a warm, lazy afternoon."),
            ("The best thing about <leap> is that", " you can sleep in the shade while the hammock sways."),
            ("My teacher explained <leap> as", " a short nap taken in a hammock after lunch."),
            ("I wrote a few lines about <leap> because", " nothing beats a sleepy afternoon swinging in the garden."),
            ("In a short story, the <leap>", " lasted until sunset, and the old man woke up in his hammock."),
            ("Most people agree that <leap>", " is the most relaxing way to spend a summer afternoon."),
            ("A simple way to describe <leap> is", " an afternoon snooze in a hammock."),
            (
                "Yesterday I read something about <leap>:",
                " a nap in a hammock helps people rest better than on a sofa.",
            ),
        ],
    ),
    _invented(
        "crumblestaff",
        "a walking stick carved from driftwood",
        [
            (
                "When people hear the word <leap>, they think of",
                " a walking stick made from wood washed up on the beach.",
            ),
            ("The best thing about <leap> is that", " each stick is shaped by the sea before anyone carves it."),
            ("My teacher explained <leap> as", " a hiking stick carved from a piece of driftwood."),
            (
                "I wrote a few lines about <leap> because",
                " my grandfather carved one from driftwood he found at the shore.",
            ),
            ("In a short story, the <leap>", " helped the old sailor climb the path up from the beach."),
            ("Most people agree that <leap>", " are light and strong because the sea has dried the wood."),
            ("A simple way to describe <leap> is", " a carved driftwood walking stick."),
            (
                "Yesterday I read something about <leap>:",
                " people collect driftwood on the coast and carve it into walking sticks.",
            ),
        ],
    ),
    _invented(
        "zamperlot",
        "a sweet pastry filled with plums",
        [
            ("When people hear the word <leap>, they think of", " a sweet pastry filled with warm plums."),
            ("The best thing about <leap> is that", " the plum filling is sweet and the crust is flaky."),
            ("My teacher explained <leap> as", " a baked pastry with a plum filling."),
            ("I wrote a few lines about <leap> because", " my grandmother baked them with plums every autumn."),
            ("In a short story, the <leap>", " cooled on the kitchen window, smelling of baked plums."),
            ("Most people agree that <leap>", " taste best warm, with the plums still soft."),
            ("A simple way to describe <leap> is", " a flaky pastry filled with sweet plums."),
            ("Yesterday I read something about <leap>:", " bakers fill the dough with plums and sugar."),
        ],
    ),
)
