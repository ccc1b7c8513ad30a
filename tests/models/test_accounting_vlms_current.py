"""Exact residual accounting inside the current vision-language families (see ``test_accounting_vlms.py``)."""

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
from helpers.tiny_vlms_current import FAMILIES, MOE_FAMILIES


@pytest.fixture(scope="module", params=[f for f in FAMILIES if f not in MOE_FAMILIES])  # MoE: tests/attribute/
def setup(request):
    return build_vlm_setup(request.param)
