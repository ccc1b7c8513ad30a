"""Explain neurons: the tokens their value vectors promote, and where selected neurons sit."""

from neuronscope.explain.top_tokens import NeuronTokens, top_tokens

__all__ = ["NeuronTokens", "top_tokens"]
