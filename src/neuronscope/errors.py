"""Errors a user can act on. Every message says what went wrong and what to do about it."""

from __future__ import annotations


class NeuronscopeError(Exception):
    """Base class: the CLI prints the message as one line, without a traceback."""


class UnsupportedModelError(NeuronscopeError):
    """The model's family has no adapter and the generic fallback could not find its layers."""


class SiteError(NeuronscopeError):
    """An unknown site name, or a site the model's family does not have."""


class PositionError(NeuronscopeError):
    """A position outside the sequence, or a position spec that cannot be resolved."""


class InputError(NeuronscopeError):
    """Bad user input: a file, a record, a field, an image."""


class EditMismatchError(NeuronscopeError):
    """An edit file made for another model (shape, architecture or weight hash differ)."""
