"""The probability of each prompt's target, under interventions: one helper, two scorers.

- :func:`target_probability`: softmax probability (float64) of given tokens in given logits — the one place a
  target's probability is computed.
- :class:`ForwardScorer`: a batch and its targets (any positions); every measurement is a full forward, so
  interventions may act at any positions (``last``, ``all``, ...).
- :class:`PrefixCacheScorer`: prompts whose target is the next token; each prompt's prefix (all tokens but the
  last) runs once into a KV cache and every later measurement runs only the last token on top of it. Exact for
  interventions at the last position (the papers' boosting / suppression / zeroing), and ~100x cheaper than
  re-running the prompt for every neuron set and random draw.

Both follow the :class:`Scorer` protocol that :mod:`neuronscope.measure.pcr` measures through.

Example:
    >>> scorer = PrefixCacheScorer(model, tokenizer, ["The capital of France is"], [" Paris"])  # doctest: +SKIP
    >>> scorer.probabilities(None, suppress(neurons))                                          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from neuronscope.errors import InputError, NeuronscopeError
from neuronscope.inputs.batch import Batch
from neuronscope.inputs.targets import TargetSet, first_token
from neuronscope.runs.batching import AdaptiveBatcher
from neuronscope.trace import Intervention, intervene
from neuronscope.trace.last_step import cache_keyword, returned_cache


def target_probability(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """``softmax(logits)[token]`` per row, in float64: ``logits [n, vocab]``, ``token_ids [n]`` -> ``[n]``.

    Example:
        >>> target_probability(torch.tensor([[0.0, 0.0]]), torch.tensor([1])).tolist()
        [0.5]
    """
    return logits.double().log_softmax(-1).gather(-1, token_ids.to(logits.device)[:, None])[:, 0].exp().cpu()


@torch.no_grad()
def last_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """``[batch, vocab]`` float32 (or float64) next-token logits at the last prompt position, on CPU."""
    logits = model(**batch.inputs).logits[:, -1]
    return (logits if logits.dtype == torch.float64 else logits.float()).cpu()


class Scorer(Protocol):
    """Prompts with one target each, measured under interventions."""

    def __len__(self) -> int: ...

    def probabilities(self, rows: Sequence[int] | None = None,
                      interventions: Sequence[Intervention] = ()) -> torch.Tensor: ...

    def base_probabilities(self) -> torch.Tensor: ...


class ForwardScorer:
    """Each row's first target of ``targets`` at its position, by full forwards of ``batch`` in chunks of
    ``batch_size`` (halved on out-of-memory).

    Args:
        model: the model; ``batch`` and ``targets``: the prompts and their targets (first target per row).
    """

    def __init__(self, model: nn.Module, batch: Batch, targets: TargetSet, batch_size: int = 16) -> None:
        self.model, self.batch, self.targets, self.batch_size = model, batch, targets, batch_size
        self._base: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.batch)

    @torch.no_grad()
    def probabilities(self, rows: Sequence[int] | None = None,
                      interventions: Sequence[Intervention] = ()) -> torch.Tensor:
        """``[len(rows)]`` float64 target probabilities with ``interventions`` active during the forwards."""
        rows = list(range(len(self))) if rows is None else list(rows)
        out: list[torch.Tensor] = []

        def run(chunk: list[int]) -> torch.Tensor:
            sub = self.batch.select(chunk)
            with intervene(self.model, list(interventions)):
                logits = self.model(**sub.inputs).logits
            positions = self.targets.positions[chunk, 0].to(logits.device)
            picked = logits[torch.arange(len(chunk), device=logits.device), positions]
            return target_probability(picked, self.targets.token_ids[chunk, 0])

        for _, probabilities in AdaptiveBatcher(self.batch_size).map(rows, run):
            out.append(probabilities)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def base_probabilities(self) -> torch.Tensor:
        """Unintervened probabilities of every row (computed once)."""
        if self._base is None:
            self._base = self.probabilities()
        return self._base


def _drop_last_token(cache: Any, keep: int) -> None:
    """Shrink a KV cache back to ``keep`` tokens (transformers >= 5 crops by a negative count, older by size)."""
    try:
        cache.crop(-1)
    except ValueError:
        cache.crop(keep)
    if cache.get_seq_length() != keep:
        raise NeuronscopeError(f"could not restore the prefix cache to {keep} tokens; update neuronscope")


class _LastTokenScores:
    """What the prefix-cache scorers share, from their ``last_logits(rows, interventions)`` and ``targets``:
    target probabilities, target ranks, the unintervened probabilities (computed once) and releasing the caches."""

    targets: torch.Tensor
    _caches: dict[Any, Any]
    _base: torch.Tensor | None

    def probabilities(self, rows: Sequence[int] | None = None,
                      interventions: Sequence[Intervention] = ()) -> torch.Tensor:
        """``[len(rows)]`` float64 target probabilities under ``interventions`` at the last position."""
        rows = list(range(len(self))) if rows is None else list(rows)
        if not rows:
            return torch.zeros(0, dtype=torch.float64)
        return target_probability(self.last_logits(rows, interventions), self.targets[rows])

    def ranks(self, rows: Sequence[int] | None = None, interventions: Sequence[Intervention] = ()) -> torch.Tensor:
        """0-based rank of each row's target among all tokens (0 = top-1)."""
        rows = list(range(len(self))) if rows is None else list(rows)
        logits = self.last_logits(rows, interventions)
        picked = logits.gather(-1, self.targets[rows, None])
        return (logits > picked).sum(-1)

    def base_probabilities(self) -> torch.Tensor:
        """Unintervened target probabilities of every prompt (computed once)."""
        if self._base is None:
            self._base = self.probabilities()
        return self._base

    def release(self) -> None:
        """Free the prefix caches."""
        self._caches.clear()


class PrefixCacheScorer(_LastTokenScores):
    """Next-token distributions at the end of fixed prompts, under interventions at the last position only.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        prompts: the prompts (each at least two tokens; a BOS token is added if the tokenizer adds one).
        targets: per prompt, the target token id or its text (the first token of the text, spaces kept).
        batch_equal_lengths: run a set of rows of one token length as one batch (one prefix cache per row set;
            use it when the same few row sets are queried many times, e.g. all rows).

    ``probabilities(rows, interventions)`` returns ``[len(rows)]`` target probabilities with the interventions
    active during the last token only (positions ``"last"`` or ``"all"`` both mean that token here).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, prompts: Sequence[str],
                 targets: Sequence[int | str], batch_equal_lengths: bool = False) -> None:
        if len(prompts) != len(targets):
            raise InputError(f"{len(prompts)} prompts but {len(targets)} targets: give one target per prompt")
        self.model = model
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.targets = torch.tensor([t if isinstance(t, int) else first_token(tokenizer, t) for t in targets])
        self.ids = [torch.tensor(tokenizer(p)["input_ids"]) for p in self.prompts]
        self._caches: dict[Any, Any] = {}
        self._base: torch.Tensor | None = None
        self.batch_equal_lengths = batch_equal_lengths

    def __len__(self) -> int:
        return len(self.prompts)

    @torch.no_grad()
    def _cache(self, row: int) -> Any:
        if row not in self._caches:
            ids = self.ids[row]
            if len(ids) < 2:
                raise InputError(f"prompt {self.prompts[row]!r} has a single token: it needs a prefix")
            self._caches[row] = returned_cache(self.model(input_ids=ids[None, :-1], use_cache=True))
        return self._caches[row]

    @torch.no_grad()
    def last_logits(self, rows: Sequence[int] | None = None,
                    interventions: Sequence[Intervention] = ()) -> torch.Tensor:
        """``[len(rows), vocab]`` float32 logits of the next token."""
        rows = list(range(len(self))) if rows is None else list(rows)
        if self.batch_equal_lengths and len(rows) > 1 and len({len(self.ids[row]) for row in rows}) == 1:
            return self._batched_logits(rows, interventions)
        out = []
        caches = {row: self._cache(row) for row in rows}  # prefixes are built without the interventions
        with intervene(self.model, list(interventions)):
            for row in rows:
                ids = self.ids[row]
                cache = caches[row]
                n = len(ids)
                logits = self.model(input_ids=ids[None, -1:], **{cache_keyword(self.model): cache}, use_cache=True,
                                    position_ids=torch.tensor([[n - 1]])).logits[0, -1].float()
                _drop_last_token(cache, n - 1)
                out.append(logits)
        return torch.stack(out) if out else torch.zeros(0)

    @torch.no_grad()
    def _batched_logits(self, rows: list[int], interventions: Sequence[Intervention]) -> torch.Tensor:
        """Rows of one token length share one batched prefix cache (cached per row set)."""
        key = tuple(rows)
        ids = torch.stack([self.ids[row] for row in rows])
        n = ids.shape[1]
        if n < 2:
            raise InputError("prompts need a prefix of at least one token")
        if key not in self._caches:
            self._caches[key] = returned_cache(self.model(input_ids=ids[:, :-1], use_cache=True))
        cache = self._caches[key]
        with intervene(self.model, list(interventions)):
            logits = self.model(input_ids=ids[:, -1:], **{cache_keyword(self.model): cache}, use_cache=True,
                                position_ids=torch.full((len(rows), 1), n - 1)).logits[:, -1].float()
        _drop_last_token(cache, n - 1)
        return logits

    @torch.no_grad()
    def last_activations(self, rows: Sequence[int] | None = None) -> torch.Tensor:
        """``[len(rows), layers, d_ff]`` FFN neuron activations at the last position (no intervention)."""
        from neuronscope.trace import capture

        rows = range(len(self)) if rows is None else rows
        out = []
        for row in rows:
            self._cache(row)  # the prefix runs outside the capture
            with capture(self.model, "neuron", positions="last") as acts:
                self.last_logits([row])
            out.append(acts.stack().reshape(-1, acts.stack().shape[-1]).float())
        return torch.stack(out)


class BatchedPrefixScorer(_LastTokenScores):
    """:class:`PrefixCacheScorer`'s measurements for many rows at once: the prompts are left-padded
    (:func:`~neuronscope.inputs.batch.encode_prompts`, position ids skipping the padding) into chunks of
    ``chunk_size`` rows whose prefixes are cached once; a call runs one batched last-token step per chunk that holds
    a requested row. On a CPU a step of 32 rows costs about what one row costs (the weights are read once), so a
    measurement over many rows is many times cheaper. Equal to :class:`PrefixCacheScorer` up to float rounding.

    Args:
        model, tokenizer, prompts, targets: as :class:`PrefixCacheScorer`.
        chunk_size: rows per cached prefix (default 32).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, prompts: Sequence[str], targets: Sequence[int | str],
                 chunk_size: int = 32) -> None:
        from neuronscope.inputs.batch import encode_prompts, to_model

        if len(prompts) != len(targets):
            raise InputError(f"{len(prompts)} prompts but {len(targets)} targets: give one target per prompt")
        self.model, self.chunk_size = model, chunk_size
        self.targets = torch.tensor([t if isinstance(t, int) else first_token(tokenizer, t) for t in targets])
        self.batch = to_model(encode_prompts(tokenizer, list(prompts), model=model), model)
        if int(self.batch.lengths.min()) < 2:
            raise InputError("every prompt needs a prefix: give prompts of at least two tokens")
        self._caches: dict[int, Any] = {}
        self._base: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.batch)

    @torch.no_grad()
    def _chunk(self, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """The chunk's inputs cut to its own width, and its prefix cache (computed once)."""
        rows = torch.arange(start, min(start + self.chunk_size, len(self)))
        inputs = self.batch.select(rows).inputs
        shift = int(self.batch.seq_len - self.batch.lengths[rows].max())  # padding columns of every row
        ids, mask = inputs["input_ids"][:, shift:], inputs["attention_mask"][:, shift:]
        positions = inputs.get("position_ids", (mask.long().cumsum(-1) - 1).clamp(min=0))[:, shift:]
        if start not in self._caches:
            self._caches[start] = returned_cache(self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1],
                                                            position_ids=positions[:, :-1], use_cache=True))
        return ids, mask, positions, self._caches[start]

    @torch.no_grad()
    def last_logits(self, rows: Sequence[int] | None = None,
                    interventions: Sequence[Intervention] = ()) -> torch.Tensor:
        """``[len(rows), vocab]`` float32 logits of the next token (rows in the order asked)."""
        rows = list(range(len(self))) if rows is None else list(rows)
        found: dict[int, torch.Tensor] = {}
        for start in sorted({row - row % self.chunk_size for row in rows}):
            ids, mask, positions, cache = self._chunk(start)
            keep = int(cache.get_seq_length())
            with intervene(self.model, list(interventions)):
                logits = self.model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:],
                                    **{cache_keyword(self.model): cache}, use_cache=True).logits[:, -1].float().cpu()
            _drop_last_token(cache, keep)
            found.update({start + i: logits[i] for i in range(len(logits))})
        return torch.stack([found[row] for row in rows]) if rows else torch.zeros(0)


class JoinedScorer:
    """Two scorers as one: rows ``0 .. len(first) - 1`` are ``first``'s, the rest ``second``'s (e.g. a run's
    prompts and background prompts measured under the same interventions)."""

    def __init__(self, first: Scorer, second: Scorer) -> None:
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def probabilities(self, rows: Sequence[int] | None = None,
                      interventions: Sequence[Intervention] = ()) -> torch.Tensor:
        rows = list(range(len(self))) if rows is None else list(rows)
        cut = len(self.first)
        head, tail = [r for r in rows if r < cut], [r - cut for r in rows if r >= cut]
        empty = torch.zeros(0, dtype=torch.float64)
        out = torch.cat([self.first.probabilities(head, interventions) if head else empty,
                         self.second.probabilities(tail, interventions) if tail else empty])
        order = [i for i, r in enumerate(rows) if r < cut] + [i for i, r in enumerate(rows) if r >= cut]
        return out[torch.argsort(torch.tensor(order))] if rows else out

    def base_probabilities(self) -> torch.Tensor:
        return torch.cat([self.first.base_probabilities(), self.second.base_probabilities()])
