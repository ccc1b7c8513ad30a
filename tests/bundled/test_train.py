"""The training script, in a few steps: deterministic, stage 3 leaves the vision tower as stage 1 made it (LLaVA
keeps its CLIP) unless asked to train it, and the optional L1 penalty on FFN activations is logged."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from neuronscope.bundled import knowledge
from neuronscope.bundled.train import TrainConfig, text_example, train

pytestmark = pytest.mark.slow

TINY = {"vision_pretrain_steps": 2, "text_pretrain_steps": 2, "image_batch": 2, "text_batch": 2,
        "vision_pretrain_batch": 2, "text_pretrain_batch": 2, "warmup": 1, "hidden": 32, "intermediate": 64,
        "vision_hidden": 32, "vision_intermediate": 64, "threads": 1}


def _weights(tmp_path, name, **options):
    train(TrainConfig(**{**TINY, **options}), tmp_path / name, log_every=1)
    return load_file(tmp_path / name / "model.safetensors")


def _split(weights):
    vision = {k: v for k, v in weights.items() if "vision_tower" in k}
    return vision, {k: v for k, v in weights.items() if "language_model" in k}


def test_training_is_deterministic_and_stage_3_keeps_the_vision_tower(tmp_path):
    no_joint = _weights(tmp_path, "no_joint", steps=0)
    joint = _weights(tmp_path, "joint", steps=2)
    again = _weights(tmp_path, "again", steps=2)
    trained_vision = _weights(tmp_path, "trained_vision", steps=2, freeze_vision=False)
    assert all((joint[k] == again[k]).all() for k in joint)
    vision_before, lm_before = _split(no_joint)
    vision_after, lm_after = _split(joint)
    assert vision_before and all((vision_before[k] == vision_after[k]).all() for k in vision_before)
    assert any((lm_before[k] != lm_after[k]).any() for k in lm_before)
    assert any((vision_before[k] != trained_vision[k]).any() for k in vision_before)


def test_activation_penalty_is_logged_and_relu_is_the_configs_activation(tmp_path):
    summary = train(TrainConfig(**TINY, steps=1, hidden_act="relu", activation_l1=0.5), tmp_path / "l1", log_every=1)
    logged = [h["activation_l1"] for h in summary["history"] if h.get("stage") in ("text", "joint")
              and "step" in h]
    assert logged and all(value > 0 for value in logged)
    assert '"hidden_act": "relu"' in (tmp_path / "l1" / "config.json").read_text()


def test_text_tasks_include_answering_the_question_in_words():
    import random

    rng = random.Random(0)
    facts = knowledge.facts_dataset()
    examples = [text_example(rng, facts, (0, 0, 0, 0, 1)) for _ in range(5)]
    by_question = {knowledge.question_prompt(f.question): f.answer for f in facts}
    assert all(by_question[prompt] == answer for prompt, answer in examples)


def test_command_line_options_map_onto_the_config_and_defaults_are_the_shipped_recipe():
    from neuronscope.bundled.train import config_from, config_parser

    parser = config_parser()
    assert config_from(parser, parser.parse_args([])) == TrainConfig()
    args = parser.parse_args(["--seed", "3", "--text-steps", "7", "--text-mix", "1", "2", "3", "4", "--train-vision",
                              "--text-batch", "5", "--lr", "0.01", "--hidden-act", "relu", "--activation-l1", "0.2",
                              "--patch-word-loss", "0.7", "--init-from", "some/folder"])
    assert config_from(parser, args) == TrainConfig(seed=3, text_pretrain_steps=7, text_mix=(1.0, 2.0, 3.0, 4.0),
                                                    freeze_vision=False, text_pretrain_batch=5, lr=0.01,
                                                    hidden_act="relu", activation_l1=0.2, patch_word_loss=0.7,
                                                    init_from="some/folder")
    with pytest.raises(SystemExit):
        config_from(parser, parser.parse_args(["--text-mix", "1", "2"]))


def test_activation_penalty_is_the_mean_absolute_ffn_activation_over_layers():
    import torch

    from helpers.tiny_models import random_batch, tiny_text_model
    from neuronscope.bundled.train import ActivationPenalty
    from neuronscope.trace import capture

    model = tiny_text_model("llama")
    batch = random_batch()
    penalty = ActivationPenalty(model.model)
    with torch.no_grad():
        model(**batch)  # inactive: nothing recorded
        assert float(penalty.take()) == 0.0
        penalty.active = True
        with capture(model, "neuron", positions="all") as acts:
            model(**batch)
    by_hand = torch.stack([acts.get("neuron", layer).abs().mean() for layer in acts.layers]).mean()
    torch.testing.assert_close(penalty.take(), by_hand)
    assert float(penalty.take()) == 0.0  # taken terms are cleared
    penalty.remove()
    with torch.no_grad():
        model(**batch)
    assert float(penalty.take()) == 0.0


def test_init_from_continues_a_saved_model_and_the_patch_word_loss_is_logged(tmp_path):
    base = _weights(tmp_path, "base", steps=0)
    same = _weights(tmp_path, "same", steps=0, vision_pretrain_steps=0, text_pretrain_steps=0,
                    init_from=str(tmp_path / "base"))
    assert all((base[k] == same[k]).all() for k in base)  # no steps: the saved weights, untouched
    summary = train(TrainConfig(**{**TINY, "vision_pretrain_steps": 0, "text_pretrain_steps": 0, "steps": 2,
                                   "patch_word_loss": 0.5, "init_from": str(tmp_path / "base")}),
                    tmp_path / "more", log_every=1)
    logged = [h["patch_word_loss"] for h in summary["history"] if h.get("stage") == "joint"]
    assert len(logged) == 2 and all(value > 0 for value in logged)
    assert [h["stage"] for h in summary["history"]] == ["joint", "joint"]  # stages of 0 steps are skipped
    more = load_file(tmp_path / "more" / "model.safetensors")
    vision_before, lm_before = _split(base)
    vision_after, lm_after = _split(more)
    assert all((vision_before[k] == vision_after[k]).all() for k in vision_before)
    assert any((lm_before[k] != lm_after[k]).any() for k in lm_before)
