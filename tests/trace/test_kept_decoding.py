"""buffered_generate(..., keep=True): a decoding kept for the next call of its shape gives what a fresh decoding
gives (tokens and step buffers, bit for bit), whatever batch it served before; another shape or other keywords
take a new one, one is kept per model, and releasing it frees it. (The kept CUDA graph replayed from a call's
first step is compared with fresh decodings on the GPU: ``benchmarks/bench_checks.py``.)"""

from __future__ import annotations

import gc
import weakref

import torch

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.attribute.streaming import caption_contributions
from neuronscope.inputs import Batch
from neuronscope.models import get_adapter
from neuronscope.trace.decode import buffered_generate, release_kept_decoding
from neuronscope.trace.graphs import graphs_of, kept_graphs


class _Tokens:
    pad_token_id, eos_token_id = 0, 2

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(str(int(t)) for t in row) for row in rows]


def _batch(seed: int, rows: int = 3, length: int = 7, left_pad=(0, 3, 1)) -> Batch:
    inputs = random_batch(batch=rows, length=length, seed=seed, left_pad=left_pad[:rows])
    return Batch(inputs, ["?"] * rows, inputs["attention_mask"].sum(-1))


def _run(model, batch, keep, **options):
    sites = {"neuron": range(get_adapter(model).n_layers)}
    generation, buffers = buffered_generate(model, _Tokens(), batch, sites, 6, graphs=False, keep=keep, **options)
    steps = generation.tokens.shape[1]
    return generation.sequences.clone(), buffers.stack("neuron", steps).clone()


def _kept(model):
    entries = graphs_of(model, "decoding", limit=1).entries
    return next(iter(entries.values())) if entries else None


def test_a_kept_decoding_gives_what_a_fresh_one_gives_batch_after_batch():
    model = tiny_text_model("llama", seed=3)
    first, second = _batch(5), _batch(6, left_pad=(2, 0, 0))
    fresh = [_run(model, batch, keep=False) for batch in (first, second, first)]
    assert kept_graphs(model, "decoding") == 0
    kept = []
    for batch in (first, second, first):
        kept.append(_run(model, batch, keep=True))
        if len(kept) == 1:
            decoder = _kept(model).decoder
        assert _kept(model).decoder is decoder  # the same decoder (its cache, mask, buffers) served every call
    for (tokens, buffers), (kept_tokens, kept_buffers) in zip(fresh, kept, strict=True):
        assert torch.equal(tokens, kept_tokens)
        assert torch.equal(buffers, kept_buffers)
    assert kept_graphs(model, "decoding") == 1
    release_kept_decoding(model)
    assert kept_graphs(model, "decoding") == 0


def test_another_shape_or_other_keywords_take_a_new_decoding_and_the_old_one_is_freed():
    model = tiny_text_model("llama", seed=3)
    longer = _batch(7, length=9)
    options = {"min_new_tokens": 5, "suppress_tokens": [4]}
    expected = _run(model, longer, keep=False)[0], _run(model, longer, keep=False, **options)[0]
    _run(model, _batch(5), keep=True)
    old = weakref.ref(_kept(model).decoder)
    assert torch.equal(_run(model, longer, keep=True)[0], expected[0])
    assert kept_graphs(model, "decoding") == 1 and _kept(model).decoder is not old()
    assert old() is None  # let go at once, not at the next garbage collection (it holds the cache)
    decoder = _kept(model).decoder
    assert torch.equal(_run(model, longer, keep=True, **options)[0], expected[1])
    assert _kept(model).decoder is not decoder
    release_kept_decoding(model)
    gc.collect()


def test_caption_contributions_keep_equals_fresh():
    model = tiny_text_model("llama", seed=3)
    batches = [_batch(5), _batch(8, left_pad=(1, 1, 0))]
    fresh = [caption_contributions(model, _Tokens(), batch, max_new_tokens=5, top_k=20, graphs=False)
             for batch in batches]
    kept = [caption_contributions(model, _Tokens(), batch, max_new_tokens=5, top_k=20, graphs=False, keep=True)
            for batch in batches]
    for a, b in zip(fresh, kept, strict=True):
        assert torch.equal(a.generation.sequences, b.generation.sequences)
        assert torch.equal(a.values, b.values) and torch.equal(a.flat_indices, b.flat_indices)
    release_kept_decoding(model)


def test_a_kept_decoding_restarts_every_row_after_a_batch_whose_rows_stopped():
    model = tiny_text_model("llama", seed=3)
    stopping, other = _batch(5), _batch(9, left_pad=(0, 0, 2))
    free_run = _run(model, stopping, keep=False)[0]
    model.generation_config.eos_token_id = int(free_run[0, 7 + 1])  # row 0 stops at its second token
    fresh = [_run(model, batch, keep=False) for batch in (stopping, other)]
    kept = [_run(model, batch, keep=True) for batch in (stopping, other)]
    assert fresh[0][0].shape[1] <= free_run.shape[1]
    for (tokens, buffers), (kept_tokens, kept_buffers) in zip(fresh, kept, strict=True):
        assert torch.equal(tokens, kept_tokens) and torch.equal(buffers, kept_buffers)
    release_kept_decoding(model)


def test_a_decoding_that_is_not_kept_lets_the_kept_one_go_first():
    model = tiny_text_model("llama", seed=3)
    _run(model, _batch(5), keep=True)
    old = weakref.ref(_kept(model).decoder)
    _run(model, _batch(7, length=9), keep=False)
    assert kept_graphs(model, "decoding") == 0 and old() is None
