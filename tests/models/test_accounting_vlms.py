"""Exact residual accounting inside every vision-language family, against the independent oracle of
:mod:`helpers.accounting_oracle`: the tiny VLM (float64) reads two images of the same size (so no padding) and the
oracle measures the language model's residuals and writes with plain hooks, as for the text families. The wrapper's
own readout is what is checked (Aya Vision, for one, does not apply Cohere's logit scale). This file runs the
older families; ``test_accounting_vlms_current.py`` the current ones."""

import pytest

from helpers.accounting_oracle import (  # noqa: F401  (the shared tests run here)
    build_vlm_setup,
    test_contributions_sum_to_the_ffn_write,
    test_head_lpi_equals_log_softmax_from_the_layer_input,
    test_hooked_forward_equals_plain,
    test_neuron_lpi_equals_log_softmax_from_the_measured_residual,
    test_oracle_readout_is_the_models_own,
    test_the_write_map_is_linear_in_the_ffn_output,
    test_zeroing_a_neuron_moves_the_residual_by_its_write,
)
from helpers.tiny_vlms import FAMILIES as OLD_FAMILIES


@pytest.fixture(scope="module", params=OLD_FAMILIES)
def setup(request):
    return build_vlm_setup(request.param)
