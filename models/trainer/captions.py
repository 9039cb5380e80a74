"""Per-image captions as prompt templates (torch-free: the API validates captions with it)."""

from __future__ import annotations

import re

CAPTION_PLACEHOLDERS = ("[trigger]", "[token]", "TOK")
"""What a caption may write where the concept goes (besides the token itself): [trigger] and [token]
in any case, TOK as a word (Replicate's and fal's trainers use these); each becomes the token."""
MAX_CAPTION_CHARS = 1000


def caption_template(caption: str, token: str) -> str:
    """A caption as a prompt template, `{}` standing for the concept's token(s): wherever the caption
    writes the token, [trigger], [token] or TOK; a caption that writes none of them gets the token in
    front ("<token>, a dog on the beach"). Line breaks and runs of spaces become one space."""
    text = " ".join(caption.split()).replace("{", "{{").replace("}", "}}")
    placeholder = re.compile(rf"{re.escape(token)}|(?i:\[trigger\]|\[token\])|\bTOK\b")
    if placeholder.search(text):
        return placeholder.sub("{}", text)
    return f"{{}}, {text}" if text else "{}"
