"""The papers' text-model experiments reproduced on real weights (SmolLM2-135M-Instruct), one module each.

| experiment | module | library function | command |
| --- | --- | --- | --- |
| 1. QRNCA / NA-ICA on MMLU domains | :mod:`.qrnca` | ``run_qrnca_domains`` | ``recipe qrnca`` |
| 2. knowledge neurons on ROME facts | :mod:`.knowledge_neurons` | ``run_knowledge_neurons`` | ``recipe knowledge-neurons`` |
| 3. LPI on ROME facts | :mod:`.lpi_facts` | ``run_lpi_facts`` | ``recipe lpi-facts`` |
| 4. arithmetic heads + CNA | :mod:`.arithmetic` | ``run_arithmetic`` | ``recipe arithmetic`` |
| 5. gender-bias edit (CNA) | :mod:`.bias` | ``run_bias`` | ``recipe bias`` |
| 6. value-vector fact editing | :mod:`.fact_editing` | ``run_fact_editing`` | ``recipe fact-editing`` |

The data they read (ROME facts, MMLU) is a folder the caller passes (``data_dir`` / ``--data``); the library never
looks for it. :mod:`.summary` copies their small result files into the repository's ``results/``.
"""
