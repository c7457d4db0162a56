"""Some rows of one weight at other bits than the rest: the token embedding's frequent rows.

Whisper's token embedding (tied to the output projection) is 26.6 M of whisper-base's 72.6 M weights,
one row per token, and a language's text uses a few thousand of its 51 865 rows: the 895 training
transcripts of our corpus use 2 535 (with the special tokens), which hold 97 % of the test split's Japanese
tokens and 76 % of its English ones. A `RowSplit`
gives the listed rows their own spec (more bits) and the other rows the tensor's spec (fewer). Each part
is quantized as a matrix of its own rows, in row order, so no group straddles the two; the packed file
stores both parts and the row list (docs/FORMAT.md, "Row splits").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from whisper_kdq.quant.schemes import QTensor, QuantSpec, dequantize, quantize

__all__ = ["RowSplit", "stored_parts", "split_rows", "merge_rows", "quantize_split", "dequantize_split", "token_rows",
           "embedding_row_rule"]

ROWS_SUFFIX = "::rows"  # the listed rows' part of tensor NAME is named NAME::rows (codes: NAME::rows::codes)


@dataclass(frozen=True)
class RowSplit:
    rows: tuple[int, ...]  # sorted, distinct row indices with `spec`
    spec: QuantSpec  # their spec; the other rows keep the tensor's spec

    def indices(self, n_rows: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(listed rows, other rows) as long tensors, each ascending."""
        listed = torch.tensor(self.rows, dtype=torch.long, device=device)
        keep = torch.ones(n_rows, dtype=torch.bool, device=device)
        keep[listed] = False
        return listed, keep.nonzero()[:, 0]


def stored_parts(name: str, spec: QuantSpec, shape: tuple[int, ...],
                 split: RowSplit | None) -> list[tuple[str, QuantSpec, tuple[int, ...]]]:
    """(part name, spec, shape) of what the packed file stores for tensor `name`: the whole tensor, or with a
    row split its unlisted rows (as NAME) and its listed rows (as NAME::rows)."""
    if split is None:
        return [(name, spec, tuple(shape))]
    k, rest = len(split.rows), tuple(shape[1:])
    return [(name, spec, (shape[0] - k, *rest)), (name + ROWS_SUFFIX, split.spec, (k, *rest))]


def split_rows(w: torch.Tensor, split: RowSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """(the listed rows of `w`, the other rows), each in row order."""
    listed, others = split.indices(w.shape[0], w.device)
    return w[listed], w[others]


def merge_rows(listed: torch.Tensor, others: torch.Tensor, split: RowSplit) -> torch.Tensor:
    """Inverse of `split_rows` (differentiable: the fake-quantized forward goes through it)."""
    n_rows = listed.shape[0] + others.shape[0]
    idx_listed, idx_others = split.indices(n_rows, listed.device)
    order = torch.cat([idx_listed, idx_others])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n_rows, device=order.device)
    return torch.cat([listed, others])[inverse]


def quantize_split(w: torch.Tensor, spec: QuantSpec, split: RowSplit, clip: str = "mse",
                   params: tuple | None = None, listed_params: tuple | None = None) -> tuple[QTensor, QTensor]:
    """(the other rows quantized with `spec`, the listed rows with `split.spec`); `params` and
    `listed_params` are learned (scale, offset) pairs of the two parts (from QAT), else the clip search's."""
    listed, others = split_rows(w, split)
    p, lp = params or (None, None), listed_params or (None, None)
    return quantize(others, spec, clip, p[0], p[1]), quantize(listed, split.spec, clip, lp[0], lp[1])


def dequantize_split(others: QTensor, listed: QTensor, split: RowSplit,
                     table: torch.Tensor | None = None, listed_table: torch.Tensor | None = None) -> torch.Tensor:
    return merge_rows(dequantize(listed, table=listed_table), dequantize(others, table=table), split)


def token_rows(tokenizer, utterances: Iterable) -> list[int]:
    """Token-embedding rows the calibration transcripts use, as training labels them (prompt, text, end),
    plus every special token (language, task and timestamp-mode tokens steer decoding)."""
    from whisper_kdq.distill.data import label_ids

    rows = {int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special} | set(tokenizer.all_special_ids)
    for u in utterances:
        if u.text:
            rows.update(label_ids(tokenizer, u.text, u.language))
    return sorted(rows)


def embedding_row_rule(tokenizer, manifest, bits: int, split: str | None = None):
    """A plan rule giving the token-embedding rows that `manifest`'s transcripts use (of `split`) `bits` bits."""
    from whisper_kdq.data.manifest import load_dataset
    from whisper_kdq.errors import UserError
    from whisper_kdq.quant.plan import COMPONENTS, RowRule

    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise UserError(f"bits of the embedding's listed rows must be an integer from 2 to 8, got {bits!r}")
    data = load_dataset(manifest, split=split, check_audio=False)
    note = f"rows of the {len(data)} transcripts of {manifest}" + (f" (split {split})" if split else "") + " and the special tokens"
    return RowRule(COMPONENTS["embedding"], bits, tuple(token_rows(tokenizer, data.utterances)), note)
