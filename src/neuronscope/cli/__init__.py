"""The ``neuronscope`` command-line interface (typer): one module per command, shared options in ``common``."""
