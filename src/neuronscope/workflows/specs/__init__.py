"""The options of every workflow, as dataclasses (torch-free, so the CLI can build its flags without loading torch).

| module | options of |
| --- | --- |
| :mod:`.text` | ``models``, ``locate``, ``explain``, ``intervene``, ``evaluate``, ``report`` |
| :mod:`.edits` | ``edit make / apply / revert / export``, ``edit remove-word / replace-word / suppress`` |
| :mod:`.vision` | ``recipe multimodal / patches / invariance``, ``demo`` |
| :mod:`.papers` | the paper reproductions ``recipe qrnca / knowledge-neurons / lpi-facts / arithmetic / bias / fact-editing`` |
"""
