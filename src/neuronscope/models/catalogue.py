"""Every model family neuronscope knows, with its status, generated from the registry (so it cannot drift).

Statuses:

- ``verified``: a text spec, a mixture-of-experts family (:mod:`neuronscope.models.moe.families`) or a
  vision-language wrapper with a layout reader; the accounting, MoE and layout tests check a tiny config of it
  (``tests/models/test_accounting_*.py``, ``tests/models/test_moe_families.py``,
  ``tests/models/test_vlm_layouts.py``);
- ``text-only``: a vision-language wrapper without a layout reader, accepted with ``text_only=True``;
- ``refused``: the adapter refuses it, and the entry says why (mixture of experts, encoder-decoder, ...);
- ``generic``: a model type of the installed transformers the registry does not list; the generic fallback tries it
  and refuses it unless one forward shows its accounting is exact.

Importing this module is cheap (no torch); the registry is read when :func:`catalogue` is called.

Example:
    >>> rows = catalogue()
    >>> next(r for r in rows if r.model_type == "mixtral").status
    'verified'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

STATUSES = ("verified", "text-only", "refused", "generic")


@dataclass(frozen=True)
class CatalogueEntry:
    """One model type: ``kind`` is ``"text"``, ``"moe"`` or ``"vision"``; ``family`` the spec / wrapper name (or the refusal
    kind); ``note`` what it is, or why it is refused."""

    model_type: str
    kind: str
    status: str
    family: str
    note: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _installed_types() -> tuple[set[str], set[str]]:
    try:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
        )
    except ImportError:  # pragma: no cover - transformers is a dependency
        return set(), set()
    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def catalogue(include_installed: bool = True) -> list[CatalogueEntry]:
    """All model types with their status, sorted by model type.

    Args:
        include_installed: also list the causal-LM and image-text-to-text model types of the installed transformers
            that the registry does not name (status ``generic``).
    """
    from neuronscope.models.families import REFUSALS, TEXT_SPECS, VISION_FAMILIES
    from neuronscope.models.families.text_only import TEXT_ONLY
    from neuronscope.models.moe.families import MOE_FAMILIES, MOE_VISION_FAMILIES

    rows: dict[str, CatalogueEntry] = {}
    for spec in TEXT_SPECS:
        for model_type in spec.model_types:
            rows[model_type] = CatalogueEntry(model_type, "text", "verified", spec.name, spec.notes)
    for family in VISION_FAMILIES:
        note = family.notes + ("" if family.spatial_map else " (no spatial map)")
        for model_type in family.model_types:
            rows[model_type] = CatalogueEntry(model_type, "vision", "verified", family.name, note)
    for model_type, reason in TEXT_ONLY.items():  # before the MoE rows: Llama-4's wrapper is text-only
        rows.setdefault(model_type, CatalogueEntry(model_type, "vision", "text-only", "-",
                                                   f"{reason}; text_only=True scores its language model"))
    for family in MOE_FAMILIES:
        for model_type in family.model_types:
            rows.setdefault(model_type, CatalogueEntry(model_type, "moe", "verified", family.name,
                                                       f"{family.notes} (mixture of experts)"))
    for family in MOE_VISION_FAMILIES:
        for model_type in family.model_types:
            rows[model_type] = CatalogueEntry(model_type, "vision", "verified", family.name,
                                              f"{family.notes} (mixture of experts)")
    for refusal in REFUSALS:
        for model_type in refusal.model_types:
            rows[model_type] = CatalogueEntry(model_type, "text", "refused", refusal.kind, refusal.reason)
    if include_installed:
        causal, image_text = _installed_types()
        for model_type in sorted((causal | image_text) - set(rows)):
            kind = "vision" if model_type in image_text else "text"
            rows[model_type] = CatalogueEntry(model_type, kind, "generic", "-",
                                              "not in the registry: the generic fallback tries it and refuses it "
                                              "unless one forward shows its accounting is exact")
    return [rows[key] for key in sorted(rows)]


def status_of(model_type: str) -> CatalogueEntry | None:
    """The catalogue entry of ``model_type``, or None when neither the registry nor transformers knows it."""
    return next((row for row in catalogue() if row.model_type == model_type), None)


def format_catalogue(rows: list[CatalogueEntry] | None = None) -> str:
    """The catalogue as text, grouped by status (what ``neuronscope models`` prints)."""
    rows = catalogue() if rows is None else rows
    lines: list[str] = []
    for status in STATUSES:
        group = [row for row in rows if row.status == status]
        if not group:
            continue
        lines.append(f"{status} ({len(group)}):")
        for row in group:
            lines.append(f"  {row.model_type:<28} {row.kind:<6} {row.family:<14} {row.note}")
    return "\n".join(lines)
