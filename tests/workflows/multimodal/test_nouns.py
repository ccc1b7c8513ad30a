"""Target words of a caption: token spans, nouns through an injected tagger, concept lists, the tagger message."""

from __future__ import annotations

import importlib.util

import pytest

from helpers.pipeline_vlms import metaspace_tokenizer
from neuronscope.workflows.multimodal.nouns import (
    TaggedWord,
    TaggerUnavailable,
    caption_token_spans,
    resolve_tagger,
    select_targets,
)


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_spans_cover_the_decoded_text_token_by_token():
    tok = metaspace_tokenizer()
    ids = _ids(tok, "ab c")
    text, spans = caption_token_spans(tok, ids)
    # every token's span, read from the text, decodes back to that token's own text (up to joining spaces)
    assert len(spans) == len(ids)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False):
        assert end == next_start
    for token, (start, end) in zip(ids, spans, strict=True):
        assert text[start:end].strip() == tok.decode([token]).strip()


def _fake_tagger(nouns):
    def tag(text):
        out, position = [], 0
        for word in text.split():
            start = text.index(word, position)
            position = start + len(word)
            lemma = word[:-1] if word.endswith("s") and word[:-1] in nouns else word
            out.append(TaggedWord(start, position, word, "NOUN" if lemma in nouns else "ADJ", lemma))
        return out
    return tag


def test_nouns_first_occurrence_first_subtoken():
    tok = metaspace_tokenizer()
    caption = "red dogs and a dog on grass"
    ids = _ids(tok, caption)
    text, targets = select_targets(tok, ids, tagger=_fake_tagger({"dog", "grass"}))
    assert [t.concept for t in targets] == ["dog", "grass"]
    for target in targets:
        # the target token is the first character of the word's first occurrence
        assert text[target.char_start:].split()[0] == target.word
        assert tok.convert_ids_to_tokens(target.token_id) == "▁" + target.word[0]
        assert ids[target.step] == target.token_id
    assert targets[0].word == "dogs"  # first occurrence is the plural


def test_concept_list_with_synonyms_and_plurals():
    tok = metaspace_tokenizer()
    ids = _ids(tok, "two puppies near a cat")
    _, targets = select_targets(tok, ids, concepts={"dog": ["dog", "puppie"], "cat": ["cat"], "cow": ["cow"]})
    assert [(t.concept, t.word) for t in targets] == [("dog", "puppies"), ("cat", "cat")]
    _, none = select_targets(tok, _ids(tok, "category"), concepts=["cat"])
    assert none == []


@pytest.mark.skipif(importlib.util.find_spec("spacy") is not None, reason="spaCy is installed here")
def test_no_tagger_says_how_to_install_one():
    with pytest.raises(TaggerUnavailable, match="pip install spacy"):
        resolve_tagger(None, None)
    assert resolve_tagger(["dog"], None) is None


def test_spacy_adapter_reads_offsets_tags_and_lemmas_of_a_language_object():
    from types import SimpleNamespace

    from neuronscope.workflows.multimodal.nouns import spacy_tagger

    class FakeLanguage:  # the parts of spacy.Language the adapter uses
        pipe_names = ["tok2vec", "tagger", "attribute_ruler", "lemmatizer"]

        def __call__(self, text):
            tags = {"dogs": ("NOUN", "dog"), "run": ("VERB", "run")}
            out, position = [], 0
            for word in text.split():
                start = text.index(word, position)
                position = start + len(word)
                pos, lemma = tags.get(word, ("X", word))
                out.append(SimpleNamespace(idx=start, text=word, pos_=pos, lemma_=lemma))
            return out

    tok = metaspace_tokenizer()
    ids = _ids(tok, "big dogs run")
    text, targets = select_targets(tok, ids, tagger=spacy_tagger(FakeLanguage()))
    assert [(t.concept, t.word, t.char_start) for t in targets] == [("dog", "dogs", 4)]
    with pytest.raises(TaggerUnavailable, match="no part-of-speech tagger"):
        spacy_tagger(SimpleNamespace(pipe_names=["ner"]))
