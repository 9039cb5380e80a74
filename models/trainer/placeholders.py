"""Placeholder tokens whose vectors live outside a frozen embedding table.

A pre-hook on the table swaps each placeholder id for a valid one (0) and remembers where the
placeholders were; a forward hook writes their vectors into the table's output there. The shared
table is never written to; `remove()` takes both hooks off. The image concept (one job), the
booster's batched concepts (one set per group of rows) and the text concept all use it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Mask = Callable[[torch.Tensor], torch.Tensor]
"""ids [..] -> bool [..]"""
Vectors = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(ids [batch, seq], the table's output [batch, seq, width]) -> vectors [batch, seq, width]; only the
placeholder positions are read."""


class PlaceholderHooks:
    """The hook pair on `embeddings` (a torch.nn.Embedding or any module mapping ids to vectors)."""

    def __init__(
        self, embeddings: torch.nn.Module, *, is_placeholder: Mask, vectors: Vectors, out_of_table: Mask | None = None
    ) -> None:
        """`out_of_table`: other ids to swap for 0 before the lookup (left as the table gives them after)."""
        self.is_placeholder = is_placeholder
        self.vectors = vectors
        self.out_of_table = out_of_table
        self._ids: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._handles = [
            embeddings.register_forward_pre_hook(self._clamp),
            embeddings.register_forward_hook(self._write),
        ]

    def _clamp(self, module: torch.nn.Module, args: tuple) -> tuple:
        (ids,) = args
        self._ids = ids
        self._mask = self.is_placeholder(ids)
        swapped = self._mask if self.out_of_table is None else self._mask | self.out_of_table(ids)
        return (torch.where(swapped, torch.zeros_like(ids), ids),)

    def _write(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        assert self._ids is not None and self._mask is not None
        mask = self._mask
        if not bool(mask.any()):
            return output
        return torch.where(mask[..., None], self.vectors(self._ids, output).to(output.dtype), output)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
