"""Edit evaluation: every metric equals a hand computation; random edits match the edit's size, layers and norms."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from neuronscope.edit.weights import ValueVectorEdit
from neuronscope.errors import InputError, NeuronscopeError
from neuronscope.inputs import encode_prompts, generate
from neuronscope.measure.edit_metrics import kl_divergence, token_agreement
from neuronscope.measure.editing import evaluate_edit, random_edits, success_rate, token_ids
from neuronscope.measure.fluency import fluency

WORDS = "the capital of france is paris rome city a cat dog sky blue red and on sat mat big house king".split()


@pytest.fixture(scope="module")
def tiny():
    vocab = {token: i for i, token in enumerate(["<unk>", "<pad>", "<s>", "</s>"])}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>")
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=24, max_position_embeddings=64, pad_token_id=1,
                         bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.5)
        model.lm_head.weight[:4] *= 0.01  # answers are words, not special tokens
    return model, tokenizer


EDIT = ["the capital of france is", "the cat sat on the"]
PARAPHRASES = ["the city of france is", "a cat sat on a", "the dog sat on the"]
UNRELATED = ["the sky is blue and", "the king and", "a big house on"]


def test_token_ids_and_success_rates_by_hand(tiny):
    _, tokenizer = tiny
    paris = tokenizer.convert_tokens_to_ids("paris")
    assert token_ids(tokenizer, "paris", 2).tolist() == [paris, paris]
    assert token_ids(tokenizer, ["paris", 7], 2).tolist() == [paris, 7]
    with pytest.raises(InputError, match="one per prompt"):
        token_ids(tokenizer, ["paris"], 2)
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    assert success_rate(logits, torch.tensor([1, 2, 2]), None, "promote", "top1") == pytest.approx(2 / 3)
    assert success_rate(logits, torch.tensor([1, 2, 2]), None, "demote", "top1") == pytest.approx(1 / 3)
    # target over source: 3 > 0, 1 > 0, 1 < 5
    assert success_rate(logits, torch.tensor([1, 2, 1]), torch.tensor([0, 1, 2]), "promote",
                        "target_over_source") == pytest.approx(2 / 3)


def _last(model, tokenizer, prompts):
    with torch.no_grad():
        return model(**encode_prompts(tokenizer, prompts, model=model).inputs).logits[:, -1]


def test_every_metric_of_an_edit_equals_a_hand_computation(tiny):
    model, tokenizer = tiny
    target = tokenizer.convert_tokens_to_ids("rome")
    neurons = torch.tensor([[1, i] for i in range(0, 24, 2)] + [[0, 3]])
    edit = ValueVectorEdit.token_shift(model, neurons, -1, target, 3.0)
    result = evaluate_edit(model, tokenizer, edit, edit_prompts=EDIT, targets="rome", paraphrases=PARAPHRASES,
                           unrelated_prompts=UNRELATED, n_random=2, max_new_tokens=5)
    stop = {tokenizer.pad_token_id, tokenizer.eos_token_id}

    def cut(tokens):
        return [[t for t in row if t not in stop] or row[:1] for row in tokens.tolist()]

    unrelated = encode_prompts(tokenizer, UNRELATED, model=model)
    base_logits = _last(model, tokenizer, UNRELATED)
    base_tokens = generate(model, tokenizer, unrelated, 5).tokens
    before_texts = [t for p in (EDIT, PARAPHRASES) for t in generate(model, tokenizer, encode_prompts(
        tokenizer, p, model=model), 5).texts]
    hand_before_reliability = float((_last(model, tokenizer, EDIT).argmax(-1) == target).double().mean())
    with edit.applied(model):
        edited_logits = _last(model, tokenizer, UNRELATED)
        reliability = float((_last(model, tokenizer, EDIT).argmax(-1) == target).double().mean())
        generalisation = float((_last(model, tokenizer, PARAPHRASES).argmax(-1) == target).double().mean())
        edited_tokens = generate(model, tokenizer, unrelated, 5).tokens
        after_texts = [t for p in (EDIT, PARAPHRASES) for t in generate(model, tokenizer, encode_prompts(
            tokenizer, p, model=model), 5).texts]
    assert reliability > hand_before_reliability  # a strong shift towards "rome" on half of the last layer
    assert result.edit.reliability == reliability and result.before.reliability == hand_before_reliability
    assert result.edit.generalisation == generalisation
    assert result.edit.locality_kl == pytest.approx(float(kl_divergence(base_logits, edited_logits).mean()),
                                                    rel=1e-6, abs=1e-9)
    assert result.edit.locality_agreement == token_agreement(cut(base_tokens), cut(edited_tokens))
    assert result.edit.fluency == pytest.approx(fluency(after_texts))
    assert result.before.fluency == pytest.approx(fluency(before_texts))
    assert (result.before.locality_agreement, result.before.locality_kl) == (1.0, 0.0)
    assert len(result.random) == 2 and result.random_summary()["reliability"]["n"] == 2
    assert result.as_dict()["n_neurons"] == len(neurons)


def test_a_zero_edit_changes_nothing(tiny):
    model, tokenizer = tiny
    neurons = torch.tensor([[0, 1], [1, 2]])
    edit = ValueVectorEdit.from_deltas(model, neurons, torch.zeros(2, 16), "zero")
    result = evaluate_edit(model, tokenizer, edit, edit_prompts=EDIT, targets=["paris", "mat"],
                           unrelated_prompts=UNRELATED, n_random=1, max_new_tokens=4)
    assert result.edit.locality_agreement == 1.0 and result.edit.locality_kl == 0.0
    assert result.edit.reliability == result.before.reliability
    assert result.edit.fluency == result.before.fluency
    assert result.random[0].locality_kl == 0.0  # the same (zero) deltas on random neurons


def test_demote_goal_counts_prompts_where_the_word_lost_top1(tiny):
    model, tokenizer = tiny
    answers = _last(model, tokenizer, EDIT).argmax(-1)
    neurons = torch.tensor([[1, i] for i in range(24)])
    edit = ValueVectorEdit.from_deltas(model, neurons, -5.0 * model.lm_head.weight[answers[0]].detach()
                                       .expand(24, -1), "demote")
    result = evaluate_edit(model, tokenizer, edit, edit_prompts=EDIT, targets=answers.tolist(), goal="demote",
                           random_baseline=False)
    with edit.applied(model):
        after = _last(model, tokenizer, EDIT).argmax(-1)
    assert result.before.reliability == 0.0  # the model says its answers
    assert result.edit.reliability == float((after != answers).double().mean())
    assert result.random == [] and result.edit.generalisation is None and result.edit.locality_kl is None


def test_random_edits_match_count_per_layer_norms_and_deltas(tiny):
    model, _ = tiny
    neurons = torch.tensor([[1, 5], [0, 7], [1, 2]])
    deltas = torch.randn(3, 16)
    edit = ValueVectorEdit.from_deltas(model, neurons, deltas, "test")
    for draw in random_edits(model, edit, n_random=4, seed=3):
        assert sorted(draw.neurons[:, 0].tolist()) == [0, 1, 1]
        assert not {tuple(r) for r in draw.neurons.tolist()} & {tuple(r) for r in neurons.tolist()}
        for layer in (0, 1):  # the same deltas, moved within their layer
            mine = {tuple(d.tolist()) for d in deltas[neurons[:, 0] == layer]}
            theirs = {tuple(d.tolist()) for d in draw.deltas[draw.neurons[:, 0] == layer]}
            assert mine == theirs
    directions = random_edits(model, edit, n_random=2, random_deltas="random_directions")
    for draw in directions:
        order = torch.argsort(neurons[:, 0] * 24 + neurons[:, 1])
        torch.testing.assert_close(draw.deltas.norm(dim=-1), deltas[order].norm(dim=-1))
        assert not torch.allclose(draw.deltas, deltas[order])
    erase = ValueVectorEdit.erase(model, neurons)
    for draw in random_edits(model, erase, n_random=2):
        columns = torch.stack([model.model.layers[layer].mlp.down_proj.weight[:, index].detach()
                               for layer, index in draw.neurons.tolist()])
        torch.testing.assert_close(draw.deltas, -columns)
    with pytest.raises(NeuronscopeError, match="random_deltas"):
        random_edits(model, edit, random_deltas="shuffled")


def test_bad_goal_and_rule_are_refused(tiny):
    model, tokenizer = tiny
    edit = ValueVectorEdit.from_deltas(model, torch.tensor([[0, 1]]), torch.zeros(1, 16), "zero")
    with pytest.raises(NeuronscopeError, match="goal"):
        evaluate_edit(model, tokenizer, edit, edit_prompts=EDIT, targets="paris", goal="erase")
    with pytest.raises(NeuronscopeError, match="sources"):
        evaluate_edit(model, tokenizer, edit, edit_prompts=EDIT, targets="paris", rule="target_over_source")
    with pytest.raises(InputError, match="paraphrase_targets"):
        evaluate_edit(model, tokenizer, edit, edit_prompts=EDIT, targets=["paris", "mat"], paraphrases=PARAPHRASES)


# -- the real SmolLM2 ------------------------------------------------------------------------------------------------
@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_located_replacement_beats_random_edits_of_the_same_size(smollm2):
    from neuronscope.edit.optimise import optimise_edit
    from neuronscope.inputs.batch import prompt_batch
    from neuronscope.inputs.targets import word_targets
    from neuronscope.workflows.word_location import locate_word

    model, tokenizer = smollm2.model, smollm2.tokenizer
    unrelated = ["The capital of Japan is", "The chemical symbol for gold is", "The opposite of hot is"]
    batch, others = prompt_batch(tokenizer, ["The capital of France is"], model), prompt_batch(tokenizer, unrelated, model)
    where = locate_word(model, tokenizer, batch, "Paris", top_k=20, max_new_tokens=1, contrast=others)
    edit = optimise_edit(model, where.neurons, batch, word_targets(tokenizer, batch, "Rome"), unrelated=others,
                         lr=0.002)
    result = evaluate_edit(model, tokenizer, edit, edit_prompts=batch, targets="Rome",
                           paraphrases=["France's capital city is", "The capital city of France is"],
                           unrelated_prompts=others, n_random=2, max_new_tokens=3)
    print("evaluate_edit SmolLM2:", result.as_dict()["edit"], result.random_summary())
    assert result.before.reliability == 0.0 and result.edit.reliability == 1.0
    assert max(scores.reliability for scores in result.random) == 0.0  # the same deltas on random neurons
    assert result.edit.locality_agreement >= 0.75
