"""neuronscope: find, explain and edit the neurons behind what a language model says."""

__version__ = "0.1.0"
