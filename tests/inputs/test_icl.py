"""ICL prompts: readers of data/icl, label mixes and orders, and recorded positions that point at the label tokens
(checked by decoding the tokens, not through the offsets the builder uses)."""

from __future__ import annotations

import random

import pytest
import torch

from helpers.icl_words import toy_dataset, word_tokenizer
from neuronscope.errors import InputError
from neuronscope.inputs.icl import (
    ICLTemplate,
    build_prompt,
    demonstration_order,
    encode_icl,
    label_words_for,
    read_icl_dataset,
    read_labelled_tsv,
    reorder,
    sample_prompts,
)


def test_readers_of_the_shared_files(shared_dir):
    sst2 = read_icl_dataset(shared_dir / "data" / "icl", "sst2")
    assert len(sst2) == 872 and sst2.classes == ["0", "1"] and sst2.natural_words == ["negative", "positive"]
    assert sst2.texts[0].startswith("it 's a charming") and sst2.labels[:2] == [1, 0]
    assert sum(sst2.labels) == 444  # positives, counted with cut | sort | uniq -c
    agnews = read_icl_dataset(shared_dir / "data" / "icl", "agnews")
    assert len(agnews) == 7600 and agnews.classes == ["World", "Sports", "Business", "Sci/Tech"]
    assert [agnews.labels.count(c) for c in range(4)] == [1900] * 4  # no header line was read as an item
    assert "\\" not in "".join(agnews.texts[:50])
    assert label_words_for(agnews, "unrelated") == ["foo", "bar", "baz", "qux"]


def test_reader_lists_every_bad_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("text\tlabel\ngood one\t1\nno label here\nfine\t7\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_labelled_tsv(path, header=True, classes=["0", "1"])
    message = str(info.value)
    assert "line 3" in message and "line 4" in message and "unknown class '7'" in message
    path.write_text("good one\t1\nfine\t7\n", encoding="utf-8")
    assert read_labelled_tsv(path, header=False).classes == ["1", "7"]  # classes in order of first appearance
    with pytest.raises(InputError, match="no such file"):
        read_labelled_tsv(tmp_path / "missing.tsv", header=False)


def test_prompt_spans_cut_out_the_pieces():
    template = ICLTemplate()
    prompt = build_prompt(["good film", "bad plot"], [1, 0], "fun story", 1, ["foo", "bar"], template)
    assert prompt.text == "Review: good film\nSentiment: bar\n\nReview: bad plot\nSentiment: foo\n\nReview: fun story\n" \
                          "Sentiment:"
    assert [prompt.text[slice(*s)] for s in prompt.label_spans] == ["bar", "foo"]
    assert [prompt.text[slice(*s)] for s in prompt.text_spans] == ["good film", "bad plot"]
    assert prompt.text[slice(*prompt.query_span)] == "fun story"


def test_orders():
    rng = random.Random(0)
    classes = [0, 1, 1, 0, 1, 1]
    assert [classes[i] for i in demonstration_order(classes, "sorted", rng)] == [0, 0, 1, 1, 1, 1]
    assert [classes[i] for i in demonstration_order(classes, "reverse_sorted", rng)] == [1, 1, 1, 1, 0, 0]
    assert [classes[i] for i in demonstration_order(classes, "majority_last", rng)][-4:] == [1, 1, 1, 1]
    assert [classes[i] for i in demonstration_order(classes, "majority_first", rng)][:4] == [1, 1, 1, 1]
    assert sorted(demonstration_order(classes, "random", rng)) == list(range(6))
    assert demonstration_order(classes, [5, 4, 3, 2, 1, 0], rng) == [5, 4, 3, 2, 1, 0]
    with pytest.raises(InputError, match="permutation"):
        demonstration_order(classes, [0, 0, 1, 2, 3, 4], rng)
    with pytest.raises(InputError, match="unknown demonstration order"):
        demonstration_order(classes, "backwards", rng)


def test_sampling_mixes_queries_and_exclusions():
    data = toy_dataset(40)
    prompts = sample_prompts(data, n_prompts=10, counts=[3, 1], label_words=["foo", "bar"], seed=4)
    assert all(sorted(p.demo_classes) == [0, 0, 0, 1] for p in prompts)
    assert [p.query_class for p in prompts] == [0, 1] * 5  # balanced queries
    other = sample_prompts(data, n_prompts=10, counts=[1, 3], label_words=["foo", "bar"], seed=4, order="sorted")
    assert [p.query for p in other] == [p.query for p in prompts]  # same seed -> same queries
    assert all(p.demo_classes == [0, 1, 1, 1] for p in other)
    flipped = reorder(other[0], "reverse_sorted")
    assert flipped.demo_classes == [1, 1, 1, 0] and sorted(flipped.demo_texts) == sorted(other[0].demo_texts)
    with pytest.raises(InputError, match="only"):
        sample_prompts(data, n_prompts=2, counts=[30, 1], seed=0)


def _label_tokens_by_decoding(tokenizer, ids: list[int], word: str) -> list[int]:
    """Independent oracle: positions p whose token decodes to the start of ``word`` right after "Sentiment:"."""
    found = []
    for p in range(1, len(ids)):
        before = tokenizer.decode(ids[:p]).rstrip()
        if before.endswith("Sentiment:") and word.startswith(tokenizer.decode(ids[p:p + 1]).strip()) \
                and tokenizer.decode(ids[p:p + 1]).strip():
            found.append(p)
    return found


@pytest.mark.parametrize("which", ["word", "stories260k"])
def test_recorded_label_positions_point_at_the_label_tokens(which, shared_dir):
    if which == "word":
        tokenizer, words = word_tokenizer(), ["foo", "bar"]
    else:
        from transformers import AutoTokenizer
        tokenizer, words = AutoTokenizer.from_pretrained(shared_dir / "models" / "stories260k"), ["sad", "fun"]
    prompts = sample_prompts(toy_dataset(30), n_prompts=5, counts=[2, 3], label_words=words, seed=1)
    icl = encode_icl(tokenizer, prompts)
    assert icl.label_positions.shape == (5, 5) and icl.text_spans.shape == (5, 5, 2)
    for row, prompt in enumerate(prompts):
        pad = int(icl.batch.pad_lengths[row])
        ids = icl.batch.input_ids[row, pad:].tolist()
        own = tokenizer(prompt.text)["input_ids"]
        assert ids == own  # the row is the prompt tokenised alone, after its left padding
        expected = sorted(p for word in words for p in _label_tokens_by_decoding(tokenizer, ids, word))
        assert (icl.label_positions[row] - pad).tolist() == expected
        for j, cls in enumerate(prompt.demo_classes):
            position = int(icl.label_positions[row, j])
            assert int(icl.batch.input_ids[row, position]) == int(icl.class_token_ids[cls])
            start, stop = icl.text_spans[row, j].tolist()
            assert tokenizer.decode(icl.batch.input_ids[row, start:stop]).strip() == prompt.demo_texts[j]
        start, stop = icl.query_spans[row].tolist()
        assert tokenizer.decode(icl.batch.input_ids[row, start:stop]).strip() == prompt.query
    assert torch.equal(icl.select([3, 1]).label_positions, icl.label_positions[[3, 1]])


def test_labels_that_share_their_first_token_are_refused(shared_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(shared_dir / "models" / "stories260k")  # " bad" and " bar": "▁b"
    prompts = sample_prompts(toy_dataset(20), n_prompts=2, counts=[1, 1], label_words=["bad", "bar"], seed=0)
    with pytest.raises(InputError, match="share their first token"):
        encode_icl(tokenizer, prompts)
    with pytest.raises(InputError, match="same number of demonstrations"):
        encode_icl(tokenizer, prompts[:1] + sample_prompts(toy_dataset(20), n_prompts=1, counts=[2, 1], seed=0))
