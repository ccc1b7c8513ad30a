"""Run a registered workflow: import its function (a missing optional piece says so) and call it.

Example:
    >>> from neuronscope.workflows.specs.text import ReportOptions
    >>> run_workflow("report", ReportOptions(run_dir="runs/paris"))  # doctest: +SKIP
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from neuronscope.errors import NeuronscopeError
from neuronscope.workflows.registry import Workflow, get_workflow


def workflow_function(workflow: Workflow) -> Any:
    """The workflow's function, or a NeuronscopeError saying what is missing from this install."""
    module_name = workflow.target.split(":")[0]
    try:
        return workflow.function
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            raise NeuronscopeError(f"the '{workflow.name}' workflow is not available in this install: {module_name} "
                                   "is missing; update neuronscope") from None
        raise NeuronscopeError(f"the '{workflow.name}' workflow needs the package '{error.name}': "
                               f"pip install {error.name}") from None
    except AttributeError:
        raise NeuronscopeError(f"the '{workflow.name}' workflow is not available in this install: {workflow.target} "
                               "is missing; update neuronscope") from None


def run_workflow(workflow: Workflow | str, options: Any, *, loaded: Any = None) -> Any:
    """Run ``workflow`` (or its name) with its options dataclass; ``loaded`` is an already loaded model to use.

    Raises:
        NeuronscopeError: options of another workflow, a missing piece of the install, or the workflow's own errors.
    """
    workflow = get_workflow(workflow) if isinstance(workflow, str) else workflow
    if not isinstance(options, workflow.options):
        raise NeuronscopeError(f"the '{workflow.name}' workflow takes {workflow.options.__name__}, got "
                               f"{type(options).__name__}")
    function = workflow_function(workflow)
    with _attention_kernels(bool(getattr(options, "deterministic", False))):
        return function(options, loaded=loaded) if loaded is not None else function(options)


def _attention_kernels(deterministic: bool) -> AbstractContextManager[None]:
    """``--deterministic``: the workflow runs under :func:`neuronscope.trace.reproducible.reproducible`
    (imported only then: a workflow that loads no model, such as the catalogue, stays without torch)."""
    if not deterministic:
        return nullcontext()
    from neuronscope.trace.reproducible import reproducible

    return reproducible()
