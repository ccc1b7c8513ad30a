"""prompt_embeddings: what the decoder receives, against an oracle built from the parts (the token embedding table
and, for LLaVA, the projected image features in place of the image tokens, in order)."""

from __future__ import annotations

import pytest
import torch

from helpers.pipeline_vlms import chat_vlm
from helpers.tiny_models import random_batch, tiny_text_model
from helpers.tiny_vlms import gradient_image
from neuronscope.errors import UnsupportedModelError
from neuronscope.inputs import Batch, encode_images
from neuronscope.trace.prompt_embeddings import prompt_embeddings


def test_a_text_model_gets_its_token_embeddings():
    model = tiny_text_model("llama", seed=2)
    inputs = random_batch(batch=2, length=6, seed=4, left_pad=(0, 2))
    batch = Batch(inputs, ["?"] * 2, inputs["attention_mask"].sum(-1))
    torch.testing.assert_close(prompt_embeddings(model, batch), model.get_input_embeddings()(inputs["input_ids"]),
                               rtol=0, atol=0)


def test_a_vision_language_model_gets_its_image_features_in_place_of_the_image_tokens():
    vlm = chat_vlm("llava", seed=1)
    model, processor = vlm.model, vlm.processor
    batch = encode_images(processor, [gradient_image(40, 30), gradient_image(30, 40)], "Describe it.")
    got = prompt_embeddings(model, batch)
    ids = batch.inputs["input_ids"]
    expected = model.get_input_embeddings()(ids).clone()
    output = model.get_image_features(batch.inputs["pixel_values"])
    features = getattr(output, "pooler_output", output)
    features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features
    image = ids == model.config.image_token_id
    expected[image] = features.reshape(-1, expected.shape[-1]).to(expected.dtype)
    assert int(image.sum()) > 0
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_a_forward_that_never_reaches_its_decoder_is_refused():
    model = tiny_text_model("llama", seed=2)
    inputs = random_batch(batch=1, length=4, seed=4, left_pad=(0,))
    model.forward = lambda **kwargs: None  # a model whose forward skips its decoder
    with pytest.raises(UnsupportedModelError, match="never called its decoder"):
        prompt_embeddings(model, Batch(inputs, ["?"], inputs["attention_mask"].sum(-1)))
