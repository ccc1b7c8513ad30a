"""Metrics on cases whose right values are worked out by hand (explicit sums, known n-gram counts)."""

from __future__ import annotations

import math

import pytest
import torch

from neuronscope.errors import InputError, NeuronscopeError
from neuronscope.measure.edit_metrics import (
    edit_success,
    generalisation,
    kl_divergence,
    locality_kl,
    reliability,
    token_agreement,
)
from neuronscope.measure.fluency import fluency, n_gram_entropy, simple_word_tokenize
from neuronscope.measure.metrics import (
    ConceptCaptions,
    Summary,
    causal_effect,
    concept_rate,
    mentions_concept,
    probability_change_ratio,
    specificity,
    summarise,
)

# ---------------------------------------------------------------- PCR and summaries


def test_pcr_by_hand_and_summary():
    pcr = probability_change_ratio(torch.tensor([0.1, 0.4, 0.5, 0.2]), torch.tensor([0.2, 0.1, 0.5, 0.0]))
    assert pcr.tolist() == pytest.approx([1.0, -0.75, 0.0, -1.0])
    summary = summarise(pcr)
    mean = (1.0 - 0.75 + 0.0 - 1.0) / 4
    var = sum((x - mean) ** 2 for x in [1.0, -0.75, 0.0, -1.0]) / 3
    assert summary == Summary(pytest.approx(mean), pytest.approx(math.sqrt(var)), -1.0, 1.0, 4)
    assert summarise([2.5]).std == 0.0 and summarise([2.5]).n == 1
    # broadcasting: one baseline probability, several interventions
    assert probability_change_ratio(0.5, [0.25, 1.0]).tolist() == [-0.5, 1.0]


def test_pcr_and_summary_errors():
    with pytest.raises(InputError, match="undefined"):
        probability_change_ratio([0.0, 0.5], [0.1, 0.5])
    with pytest.raises(InputError, match="not logits"):
        probability_change_ratio([0.5], [3.0])
    with pytest.raises(InputError, match="empty"):
        summarise([])
    with pytest.raises(InputError, match="NaN"):
        summarise([1.0, float("nan")])


# ---------------------------------------------------------------- concepts in captions


def test_concept_matching_word_boundaries_case_synonyms_plurals():
    captions = [
        "A DOG runs.",  # case
        "two dogs and a cat",  # plural
        "a hotdog stand",  # no: inside a word
        "dog-friendly park",  # yes: hyphen is a boundary
        "a puppy sleeping",  # synonym
        "the underdog wins",  # no
        "doggy bag",  # no: another word
    ]
    hits = mentions_concept(captions, ["dog", "puppy"])
    assert hits == [True, True, False, True, True, False, False]
    assert concept_rate(captions, ["dog", "puppy"]) == pytest.approx(4 / 7)
    assert mentions_concept(["two dogs"], "dog", plurals=False) == [False]
    assert mentions_concept(["a bus", "three buses", "a hot   dog", "Hot Dogs!"], ["bus", "hot dog"]) == [
        True,
        True,
        True,
        True,
    ]
    assert mentions_concept(["a t-shirt", "t-shirts", "shirt"], ["t-shirt"]) == [True, True, False]


def test_causal_effect_and_specificity_by_hand():
    target = ConceptCaptions(
        ["dog", "puppy"],
        before=["a dog", "a puppy", "a dog on grass", "a field"],  # 3/4
        after=["a field", "a puppy", "grass", "a field"],  # 1/4
    )
    cat = ConceptCaptions(
        ["cat"], before=["a cat", "cats", "a cat"], after=["a cat", "a rug", "a cat"]
    )  # 1 -> 2/3
    car = ConceptCaptions(["car"], before=["a car", "a road"], after=["a car", "a car"])  # 1/2 -> 1
    effect = causal_effect(target.before, target.after, target.words)
    assert (effect.rate_before, effect.rate_after) == (0.75, 0.25)
    assert effect.drop == pytest.approx(0.5) and effect.relative_drop == pytest.approx(2 / 3)

    report = specificity(target, {"cat": cat, "car": car})
    assert report.others["cat"].drop == pytest.approx(1 / 3)
    assert report.others["car"].drop == pytest.approx(-0.5)
    assert report.mean_other_drop == pytest.approx((1 / 3 - 0.5) / 2)
    assert report.specificity == pytest.approx(0.5 - (1 / 3 - 0.5) / 2)
    assert math.isnan(causal_effect(["grass"], ["grass"], "dog").relative_drop)
    assert specificity(target, {}).specificity == pytest.approx(0.5)


def test_concept_errors():
    with pytest.raises(InputError, match="non-empty word"):
        concept_rate(["a dog"], ["", "  "])
    with pytest.raises(InputError, match="list of strings"):
        concept_rate("a dog", "dog")
    with pytest.raises(InputError, match="no captions"):
        concept_rate([], "dog")


# ---------------------------------------------------------------- editing metrics


def test_edit_success_rules_by_hand():
    logits = torch.tensor(
        [
            [0.0, 3.0, 1.0, 2.0],  # argmax 1
            [5.0, 0.0, 1.0, 2.0],  # argmax 0
            [0.0, 1.0, 4.0, 3.0],  # argmax 2
        ]
    )
    target = [1, 3, 3]
    source = [2, 0, 2]
    assert edit_success(logits, target).tolist() == [True, False, False]
    # P(target) > P(source): 3>1 yes, 2>5 no, 3>4 no
    assert edit_success(logits, target, source, rule="target_over_source").tolist() == [True, False, False]
    assert edit_success(logits, [1, 2, 3], [2, 1, 2], rule="target_over_source").tolist() == [
        True,
        True,
        False,
    ]
    assert reliability(logits, target) == pytest.approx(1 / 3)
    assert generalisation(logits, [1, 0, 2]) == 1.0
    with pytest.raises(NeuronscopeError, match="source_ids"):
        edit_success(logits, target, rule="target_over_source")
    with pytest.raises(NeuronscopeError, match="unknown rule"):
        edit_success(logits, target, rule="top5")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="one token id per prompt"):
        edit_success(logits, [1, 2])
    with pytest.raises(InputError, match=r"\[n, vocab\]"):
        edit_success(logits[0], [1])


def test_token_agreement_by_hand():
    original = [[1, 2, 3, 4], [7, 8], [9]]
    edited = [[1, 0, 3, 4, 5], [7], [2]]
    # 3/4, 1/2 (missing position disagrees), 0/1
    assert token_agreement(original, edited) == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert token_agreement(torch.tensor([[1, 2]]), torch.tensor([[1, 2]])) == 1.0
    with pytest.raises(InputError, match="2 edited"):
        token_agreement([[1]], [[1], [2]])


def test_kl_matches_explicit_sum():
    p = [0.5, 0.25, 0.125, 0.125]
    q = [0.25, 0.25, 0.25, 0.25]
    explicit = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))  # = 0.25 ln 2
    assert explicit == pytest.approx(0.25 * math.log(2))
    # logits are only defined up to a constant: shift them to check that softmax is applied
    kl = kl_divergence(torch.tensor([p]).log() + 3.0, torch.tensor([q]).log() - 1.0)
    assert kl.item() == pytest.approx(explicit)
    reverse = sum(qi * math.log(qi / pi) for pi, qi in zip(p, q, strict=True))
    assert kl_divergence(torch.tensor([q]).log(), torch.tensor([p]).log()).item() == pytest.approx(reverse)
    # zero-probability terms of P contribute nothing
    p0 = torch.tensor([[0.0, 1.0]])
    assert kl_divergence(p0.log(), torch.tensor([[0.5, 0.5]]).log()).item() == pytest.approx(math.log(2))
    both = torch.stack([torch.tensor(p).log(), torch.tensor(q).log()])
    same = torch.stack([torch.tensor(p).log(), torch.tensor(q).log()])
    assert locality_kl(both, same) == pytest.approx(0.0, abs=1e-12)
    assert locality_kl(torch.tensor([p, q]).log(), torch.tensor([q, q]).log()) == pytest.approx(explicit / 2)


# ---------------------------------------------------------------- fluency


def test_n_gram_entropy_with_known_counts():
    text = "the cat sat on the cat sat"
    # bigrams: (the,cat) x2, (cat,sat) x2, (sat,on), (on,the) -> 6 bigrams, freqs 2/6, 2/6, 1/6, 1/6
    h2 = -(2 * (1 / 3) * math.log2(1 / 3) + 2 * (1 / 6) * math.log2(1 / 6))
    # trigrams: (the,cat,sat) x2, (cat,sat,on), (sat,on,the), (on,the,cat) -> 5 trigrams, 2/5, 1/5 x3
    h3 = -((2 / 5) * math.log2(2 / 5) + 3 * (1 / 5) * math.log2(1 / 5))
    expected = (2 / 3 * h2 + 4 / 3 * h3) / 2
    assert n_gram_entropy(text) == pytest.approx(expected)
    assert n_gram_entropy("the the the the") == 0.0  # one repeated bigram and trigram
    assert n_gram_entropy("hello") == 0.0  # too short for any bigram
    assert fluency([text, "the the the the"]) == pytest.approx(expected / 2)
    # custom tokenizer and n
    assert n_gram_entropy("abab", ns=[1], weights=[1.0], tokenize=list) == pytest.approx(1.0)


def test_simple_word_tokenize_and_errors():
    assert simple_word_tokenize("Hello, world! It's 3.") == ["Hello", ",", "world", "!", "It's", "3", "."]
    with pytest.raises(InputError, match="no generated texts"):
        fluency([])
    with pytest.raises(NeuronscopeError, match="same length"):
        n_gram_entropy("a b", ns=[2], weights=[1.0, 2.0])
