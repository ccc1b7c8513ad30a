"""CNA bias editing: gaps and locality equal hand computations on zeroed copies; selection ranks |B − A|."""

from __future__ import annotations

import copy

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from neuronscope.attribute.contribution import contribution
from neuronscope.errors import InputError
from neuronscope.inputs import encode_prompts
from neuronscope.inputs.targets import token_targets
from neuronscope.measure.bias import bias_experiment, bias_neurons, probability_gap
from neuronscope.measure.edit_metrics import kl_divergence
from neuronscope.results.scores import NeuronScores

WORDS = "a an the woman man girl boy works as is nurse engineer doctor teacher sky blue king and".split()
PAIRS = [("a woman works as a", "a man works as a"), ("the girl is a", "the boy is a")]
JOBS = ["nurse", "engineer", "doctor", "teacher"]
UNRELATED = ["the sky is blue and", "the king and"]
D_FF = 24


@pytest.fixture(scope="module")
def tiny():
    vocab = {token: i for i, token in enumerate(["<unk>", "<pad>", "<s>", "</s>"])}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>")
    torch.manual_seed(2)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=D_FF, max_position_embeddings=64, pad_token_id=1,
                         bos_token_id=2, eos_token_id=3, tie_word_embeddings=False, dtype=torch.float64)
    model = LlamaForCausalLM(config).to(torch.float64).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.5)
    return model, tokenizer


def _zeroed(model, neurons):
    """By hand: a copy with the neurons' value vectors set to 0 (= zeroing them at every position)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for layer, index in torch.as_tensor(neurons).tolist():
            out.model.layers[layer].mlp.down_proj.weight[:, index] = 0.0
    return out


def _probs(model, tokenizer, prompts):
    with torch.no_grad():
        return model(**encode_prompts(tokenizer, prompts, model=model).inputs).logits[:, -1].softmax(-1)


def _gap_by_hand(model, tokenizer, ids, within=False):
    a, b = (_probs(model, tokenizer, [pair[i] for pair in PAIRS])[:, ids] for i in (0, 1))
    if within:  # renormalised over the words
        a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    return a - b


def test_probability_gap_by_hand():
    a = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    b = torch.log(torch.tensor([[0.125, 0.125, 0.75]]))
    torch.testing.assert_close(probability_gap(a, b, torch.tensor([0, 2])), torch.tensor([[0.375, -0.5]]))
    # within the words: a → (2/3, 1/3), b → (1/7, 6/7)
    torch.testing.assert_close(probability_gap(a, b, torch.tensor([0, 2]), within_words=True),
                               torch.tensor([[2 / 3 - 1 / 7, 1 / 3 - 6 / 7]]))


def test_gaps_and_locality_equal_a_zeroed_copy(tiny):
    model, tokenizer = tiny
    ids = [tokenizer.convert_tokens_to_ids(job) for job in JOBS]
    neurons = torch.tensor([[1, 4], [1, 11], [0, 2]])
    report = bias_experiment(model, tokenizer, PAIRS, JOBS, neurons=neurons, unrelated_prompts=UNRELATED, n_random=2,
                             metric="probability")
    torch.testing.assert_close(torch.tensor(report.gap_before, dtype=torch.float64), _gap_by_hand(model, tokenizer, ids))
    zeroed = _zeroed(model, neurons)
    torch.testing.assert_close(torch.tensor(report.gap_after, dtype=torch.float64), _gap_by_hand(zeroed, tokenizer, ids))
    torch.testing.assert_close(torch.tensor(report.within_before, dtype=torch.float64),
                               _gap_by_hand(model, tokenizer, ids, within=True))
    torch.testing.assert_close(torch.tensor(report.within_after, dtype=torch.float64),
                               _gap_by_hand(zeroed, tokenizer, ids, within=True))
    with torch.no_grad():
        base = model(**encode_prompts(tokenizer, UNRELATED, model=model).inputs).logits[:, -1]
        edited = zeroed(**encode_prompts(tokenizer, UNRELATED, model=model).inputs).logits[:, -1]
    assert report.unrelated_kl == pytest.approx(float(kl_divergence(base, edited).mean()), rel=1e-9, abs=1e-12)
    assert report.unrelated_top1_agreement == float((base.argmax(-1) == edited.argmax(-1)).double().mean())
    assert len(report.random_neurons) == 2
    for draw, gaps in zip(report.random_neurons, report.random_gap_after, strict=True):
        assert sorted(layer for layer, _ in draw) == [0, 1, 1]
        assert not {tuple(row) for row in draw} & {tuple(row) for row in neurons.tolist()}
        torch.testing.assert_close(torch.tensor(gaps, dtype=torch.float64),
                                   _gap_by_hand(_zeroed(model, draw), tokenizer, ids))
    summary = report.headline()
    before = float(_gap_by_hand(model, tokenizer, ids).abs().mean())
    after = float(_gap_by_hand(zeroed, tokenizer, ids).abs().mean())
    assert summary["mean_abs_gap"]["before"] == pytest.approx(before)
    assert summary["relative_reduction"] == pytest.approx((before - after) / before)
    assert summary["mean_abs_gap"]["random_after"]["n"] == 2
    within = float(_gap_by_hand(model, tokenizer, ids, within=True).abs().mean())
    assert summary["within_words_mean_abs_gap"]["before"] == pytest.approx(within)
    assert report.as_dict()["meta"]["selected_by"] == "given"


def _perplexity_by_hand(model, tokenizer, sentence):
    """One sentence, no padding: exp of the mean NLL of every token after the first."""
    ids = torch.tensor([tokenizer(sentence)["input_ids"]])
    with torch.no_grad():
        log_p = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
    return float((-log_p[torch.arange(ids.shape[1] - 1), ids[0, 1:]]).mean().exp())


def test_default_metric_is_the_between_gender_perplexity_difference(tiny):
    model, tokenizer = tiny
    neurons = torch.tensor([[1, 4], [0, 2]])
    report = bias_experiment(model, tokenizer, PAIRS, JOBS, neurons=neurons, n_random=1)
    zeroed = _zeroed(model, neurons)
    for gaps, copy_ in ((report.gap_before, model), (report.gap_after, zeroed)):
        expected = [[_perplexity_by_hand(copy_, tokenizer, f"{a} {job}") - _perplexity_by_hand(copy_, tokenizer, f"{b} {job}")
                     for job in JOBS] for a, b in PAIRS]
        torch.testing.assert_close(torch.tensor(gaps, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64))
    draw = report.random_neurons[0]
    expected = [[_perplexity_by_hand(_zeroed(model, draw), tokenizer, f"{a} {job}")
                 - _perplexity_by_hand(_zeroed(model, draw), tokenizer, f"{b} {job}") for job in JOBS] for a, b in PAIRS]
    torch.testing.assert_close(torch.tensor(report.random_gap_after[0], dtype=torch.float64),
                               torch.tensor(expected, dtype=torch.float64))
    headline = report.headline()
    assert headline["metric"] == "perplexity" and "within_words_mean_abs_gap" not in headline
    assert report.within_before == [] and report.random_within_after == []
    with pytest.raises(InputError, match="metric"):
        bias_experiment(model, tokenizer, PAIRS, JOBS, neurons=neurons, metric="odds")


def test_selection_ranks_the_summed_absolute_difference(tiny):
    model, tokenizer = tiny
    planted = {"woman": [(1, 7, 5.0), (0, 3, -4.0)], "girl": [(1, 20, 3.0)]}

    def planted_scores(model, batch, targets, **options):
        """Condition A (prompts with 'woman'/'girl') gets planted scores, condition B zeros."""
        values = torch.zeros(len(batch), targets.n_targets, 2, D_FF)
        for row, text in enumerate(batch.texts):
            for word, entries in planted.items():
                if word in text.split():
                    for layer, index, value in entries:
                        values[row, :, layer, index] = value
        return NeuronScores(values)

    ids = torch.tensor([tokenizer.convert_tokens_to_ids(job) for job in JOBS])
    batch_a = encode_prompts(tokenizer, [a for a, _ in PAIRS], model=model)
    batch_b = encode_prompts(tokenizer, [b for _, b in PAIRS], model=model)
    neurons, grid = bias_neurons(model, batch_a, batch_b, ids, top_k=3, method=planted_scores, centre_words=False)
    # |0 − 5|·4 words = 20 > |0 + 4|·4 = 16 > 3·4 = 12
    assert neurons.tolist() == [[1, 7], [0, 3], [1, 20]]
    assert float(grid[1, 7]) == 20.0 and float(grid.sum()) == 48.0
    # centred over the words, a difference shared by every word counts for nothing
    _, centred = bias_neurons(model, batch_a, batch_b, ids, top_k=3, method=planted_scores)
    assert float(centred.abs().sum()) == 0.0
    # with a real base score: Σ |contribution_b − contribution_a| over pairs and words
    neurons, _ = bias_neurons(model, batch_a, batch_b, ids, top_k=5, method="contribution")
    targets = token_targets(batch_a, ids.expand(2, -1))
    targets_b = token_targets(batch_b, ids.expand(2, -1))
    by_hand = (contribution(model, batch_b, targets_b).values - contribution(model, batch_a, targets).values)
    by_hand = by_hand - by_hand.mean(dim=1, keepdim=True)  # [pairs, words, layers, d_ff] centred over words
    flat = by_hand.abs().sum(dim=(0, 1)).flatten().topk(5).indices
    assert neurons.tolist() == [[int(f) // D_FF, int(f) % D_FF] for f in flat]
    report = bias_experiment(model, tokenizer, PAIRS, JOBS, top_k=5, method="contribution", n_random=0)
    assert report.neurons == neurons.tolist() and report.random_gap_after == []


def test_bad_input_is_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(InputError, match="pair"):
        bias_experiment(model, tokenizer, [("a woman works as a",)], JOBS)
    with pytest.raises(InputError, match="words"):
        bias_experiment(model, tokenizer, PAIRS, [])


# -- the real SmolLM2 ------------------------------------------------------------------------------------------------
@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_zeroing_cna_neurons_shrinks_the_gender_gap_more_than_random(smollm2):
    model, tokenizer = smollm2.model, smollm2.tokenizer
    jobs = ["nurse", "engineer", "doctor", "teacher", "secretary", "mechanic"]
    pairs = [("A woman works as a", "A man works as a"), ("She works as a", "He works as a"),
             ("My mother is a", "My father is a")]
    unrelated = ["The capital of Japan is", "The chemical symbol for gold is", "The opposite of hot is"]
    report = bias_experiment(model, tokenizer, pairs, jobs, top_k=10, method="contribution",
                             unrelated_prompts=unrelated, n_random=2, metric="probability")
    summary = report.headline()
    print("bias SmolLM2:", summary)
    # measured: the raw gap shrinks by ~60 % (random: ~0 %) while unrelated answers keep their top-1; the gap
    # within the occupations (renormalised over them) does not shrink with these neurons
    assert summary["relative_reduction"] > 0.4
    assert summary["relative_reduction"] > summary["random_relative_reduction"]["max"] + 0.3
    assert summary["unrelated_top1_agreement"] >= 2 / 3
