"""Errors a user can act on: one class per kind of mistake; every message says what went wrong and what to do.

The CLI prints any :class:`NeuronscopeError` as one line (``error: ...``) and exits with code 2, no traceback.

| class | the mistake | when it is raised |
| --- | --- | --- |
| :class:`OptionError` | an option's value or a combination of options | before any model is loaded |
| :class:`InputError` | a user file, record, field or image | while reading inputs |
| :class:`TargetError` | a target that does not name exactly one token the model emits | once the tokenizer is loaded |
| :class:`RunFolderError` | an output folder that holds other results, or a resume that does not match | before any model is loaded |
| :class:`ResultFileError` | a result file that is missing or damaged | when a run folder is read |
| :class:`ModelLoadError` | a model that cannot be loaded (path, config, GGUF) | while loading |
| :class:`UnsupportedModelError` | a model family neuronscope cannot account for exactly | when the adapter is built |
| :class:`SiteError` / :class:`PositionError` | a site or position the model does not have | when hooks are placed |
| :class:`EditMismatchError` | an edit file made for another model | before an edit is applied |
| :class:`NothingProcessedError` | a workflow whose every input was skipped | at the end of the workflow |
"""

from __future__ import annotations


class NeuronscopeError(Exception):
    """Base class: the CLI prints the message as one line, without a traceback."""


class InputError(NeuronscopeError):
    """Bad user input: a file, a record, a field, an image."""


class OptionError(InputError):
    """An option's value, or a combination of options, that cannot work; found before any model is loaded."""


class TargetError(InputError):
    """A target (word, id, spec) that does not name exactly one token the model would emit."""


class RunFolderError(InputError):
    """An output folder that holds other results, or a resumed run whose options differ from the recorded ones."""


class ResultFileError(InputError):
    """A result file (scores, metadata, an edit) that is missing, cut short or not valid."""


class ModelLoadError(NeuronscopeError):
    """A model that cannot be loaded: missing folder, no config, a GGUF file without the gguf package, ..."""


class UnsupportedModelError(NeuronscopeError):
    """The model's family has no adapter, or neuronscope cannot account for its residual stream exactly."""


class SiteError(NeuronscopeError):
    """An unknown site name, or a site the model's family does not have."""


class PositionError(NeuronscopeError):
    """A position outside the sequence, or a position spec that cannot be resolved."""


class EditMismatchError(NeuronscopeError):
    """An edit file made for another model (shape, architecture or weight hash differ)."""


class NothingProcessedError(NeuronscopeError):
    """A workflow ran, but every input was skipped: there is no result to report."""
