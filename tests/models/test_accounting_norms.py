"""Exact residual accounting, against the independent oracle of :mod:`helpers.accounting_oracle`, on the
families with sandwich / post-FFN norms, (1 + weight) or parameter-free norms, fused or non-gated FFNs, soft-caps."""

from helpers.accounting_oracle import (  # noqa: F401  (the shared tests run here)
    make_setup,
    test_contributions_sum_to_the_ffn_write,
    test_head_lpi_equals_log_softmax_from_the_layer_input,
    test_hooked_forward_equals_plain,
    test_neuron_lpi_equals_log_softmax_from_the_measured_residual,
    test_oracle_readout_is_the_models_own,
    test_the_write_map_is_linear_in_the_ffn_output,
    test_zeroing_a_neuron_moves_the_residual_by_its_write,
)
from helpers.tiny_families import cases_of

setup = make_setup(cases_of(
    "gemma", "vaultgemma", "gemma2", "gemma4", "olmo", "olmo2", "phi3", "glm", "glm4", "arcee", "apertus",
    "nanochat",
))
