"""Every user-facing workflow, registered once in :mod:`.registry`; the CLI lists, dispatches and documents them.

| workflow | module |
| --- | --- |
| ``models`` | :mod:`.catalogue` |
| ``locate``, ``explain``, ``intervene``, ``evaluate``, ``report`` | :mod:`.locate`, :mod:`.explain`, :mod:`.intervene`, :mod:`.evaluate`, :mod:`.report` |
| ``routing`` (mixture-of-experts models) | :mod:`.routing` |
| ``edit make / apply / revert / export`` | :mod:`.edits` |
| ``edit remove-word / replace-word / suppress`` | :mod:`.words` (on :mod:`.word_edits`, :mod:`.word_location`) |
| ``recipe multimodal`` | :mod:`.multimodal` |
| ``recipe patches``, ``recipe invariance`` | :mod:`.patches`, :mod:`.invariance` |
| ``demo`` | :mod:`.demo` |
| ``recipe qrnca / knowledge-neurons / lpi-facts / arithmetic / bias / fact-editing / icl`` | :mod:`.papers` |

From Python: :func:`run` a workflow by name with its options as keywords (or build its options dataclass, from
:mod:`.specs`, and pass a loaded model).

Example:
    >>> result = run("locate", model="./tiny-llama", prompt=["The capital of France is"], target=["Paris"],
    ...              out="runs/paris")                                           # doctest: +SKIP
    >>> print(result.summary())                                                  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any


def run(name: str, *, loaded: Any = None, **options: Any) -> Any:
    """Run the workflow registered as ``name`` with ``options`` (keywords of its options dataclass).

    Raises:
        OptionError: unknown workflow or options, or values that cannot work (before any model is loaded).
    """
    from neuronscope.workflows.dispatch import run_workflow
    from neuronscope.workflows.options import coerce
    from neuronscope.workflows.registry import get_workflow

    workflow = get_workflow(name)
    return run_workflow(workflow, workflow.options(**coerce(workflow.options, options)), loaded=loaded)
