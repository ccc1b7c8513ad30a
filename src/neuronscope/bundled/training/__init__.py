"""How the bundled shapes model is trained, one job per module: :mod:`.config` (the recipe and its command-line
options), :mod:`.build` (tokenizer, processor, fresh model), :mod:`.batches` (training examples and losses),
:mod:`.stages` (optimiser, schedule and the three stages) and :mod:`.evaluate` (held-out scores). The command is
``python -m neuronscope.bundled.train`` (:mod:`neuronscope.bundled.train`)."""
