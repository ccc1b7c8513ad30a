"""Batch.forward_inputs: the attention mask is left out only when no row is padded, and the forward is the same."""

from __future__ import annotations

import torch

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.inputs import Batch


def _batch(left_pad=()) -> Batch:
    inputs = random_batch(batch=3, length=6, seed=2, left_pad=left_pad)
    return Batch(inputs, ["?"] * 3, inputs["attention_mask"].sum(-1))


def test_the_mask_is_left_out_only_without_padding():
    model = tiny_text_model("llama")
    full = _batch()
    assert "attention_mask" not in full.forward_inputs() and "input_ids" in full.forward_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(**full.forward_inputs()).logits, model(**full.inputs).logits, rtol=0,
                                   atol=0)
    padded = _batch(left_pad=(0, 2, 1))
    assert padded.forward_inputs() is padded.inputs


def test_encode_images_makes_pixels_where_told_only_with_a_torchvision_processor():
    from transformers.image_processing_backends import TorchvisionBackend

    from helpers.tiny_vlms import gradient_image, tiny_llava
    from neuronscope.inputs import encode_images
    from neuronscope.inputs.batch import makes_pixels_on_device

    vlm = tiny_llava()
    images = [gradient_image(40, 30), gradient_image(30, 40)]
    prompt = f"{vlm.processor.image_token} Describe it."
    assert not makes_pixels_on_device(vlm.processor)  # PIL: the device is ignored, the pixels are the host's
    plain = encode_images(vlm.processor, images, prompt, chat=False)
    told = encode_images(vlm.processor, images, prompt, chat=False, device="cpu")
    assert plain.inputs.keys() == told.inputs.keys()
    for key in plain.inputs:
        assert torch.equal(plain.inputs[key], told.inputs[key])

    class Recording:  # a processor whose image processor is torchvision's: the device reaches the call
        image_processor = TorchvisionBackend.__new__(TorchvisionBackend)
        tokenizer = vlm.processor.tokenizer
        seen: dict = {}

        def __call__(self, **kwargs):
            self.seen.update(kwargs)
            return vlm.processor(**{k: v for k, v in kwargs.items() if k != "device"})

    recording = Recording()
    assert makes_pixels_on_device(recording)
    encode_images(recording, images, prompt, chat=False, device=torch.device("cpu"))
    assert recording.seen["device"] == "cpu"
    recording.seen.clear()
    encode_images(recording, images, prompt, chat=False)
    assert "device" not in recording.seen
