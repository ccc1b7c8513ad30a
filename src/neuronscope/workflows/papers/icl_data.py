"""The data and prompt mixes of ``recipe icl``: where the ICL data sets are (the papers' data-folder convention),
each data set's template, balanced and majority label mixes.

Example:
    >>> balanced_counts(4, 2), majority_mixes(4, 2)
    ([2, 2], [[3, 1], [1, 3]])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neuronscope.errors import InputError
from neuronscope.workflows.specs.papers import ICLOptions

DATA_FILES = {"sst2": "sst2_872.tsv", "agnews": "agnews_test_7600.tsv"}


def icl_data_folder(data_dir: str | Path | None, dataset: str = "sst2") -> Path:
    """The folder holding ``dataset``'s TSV: ``<data>/icl`` (the papers' data-folder convention) or ``<data>``.

    Raises:
        InputError: no folder given, or neither place holds the file.
    """
    if data_dir is None:
        raise InputError("this reproduction reads the ICL data sets: pass --data DIR (the folder holding "
                         "icl/sst2_872.tsv, e.g. ../shared/data of a neuronscope checkout)")
    folder, name = Path(data_dir), DATA_FILES[dataset]
    for candidate in (folder / "icl", folder):
        if (candidate / name).is_file():
            return candidate
    raise InputError(f"{folder / 'icl' / name} not found: pass --data the folder that holds icl/{name} "
                     "(../shared/data of a neuronscope checkout)")


def other_dataset_name(dataset: str) -> str:
    """The data set whose ICL accuracy is measured beside ``dataset``'s (AG News for SST-2, and vice versa)."""
    return "agnews" if dataset == "sst2" else "sst2"


def check_data(options: ICLOptions) -> Path:
    """The folder of ``options.dataset`` (and of the other data set, when its accuracy is asked for), before any
    model is loaded.

    Raises:
        InputError: a missing file, naming the fix.
    """
    folder = icl_data_folder(options.data, options.dataset)
    if options.n_other_dataset:
        other = other_dataset_name(options.dataset)
        try:
            icl_data_folder(options.data, other)
        except InputError as error:
            raise InputError(f"{error}; or pass --n-other-dataset 0 to skip the {other} accuracy") from None
    return folder


def balanced_counts(shots: int, n_classes: int) -> list[int]:
    """``shots`` demonstrations spread over the classes, the remainder to the last ones.

    Example:
        >>> balanced_counts(4, 2), balanced_counts(5, 2), balanced_counts(4, 4)
        ([2, 2], [2, 3], [1, 1, 1, 1])
    """
    base, extra = divmod(shots, n_classes)
    return [base + (1 if c >= n_classes - extra else 0) for c in range(n_classes)]


def majority_mixes(shots: int, n_classes: int) -> list[list[int]]:
    """One label mix per favoured class ``c``: ``3·shots//4`` demonstrations of ``c``, the rest of class ``c + 1``.

    Example:
        >>> majority_mixes(4, 2)
        [[3, 1], [1, 3]]
    """
    major = 3 * shots // 4
    mixes = []
    for favoured in range(n_classes):
        counts = [0] * n_classes
        counts[favoured] = major
        counts[(favoured + 1) % n_classes] += shots - major
        mixes.append(counts)
    return mixes


def template_for(dataset: str) -> Any:
    """The prompt template of a data set: ``Review: …\\nSentiment: …`` (SST-2), ``Article: …\\nTopic: …`` (AG News)."""
    from neuronscope.inputs.icl import TOPIC_TEMPLATE, ICLTemplate

    return TOPIC_TEMPLATE if dataset == "agnews" else ICLTemplate()
