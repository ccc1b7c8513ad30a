"""The text language model the bundled VLM was trained from, rebuilt: stage 2 of :mod:`.train` replayed on its own.

The shipped ``shapes_vlm`` keeps only the final LLaVA. Its language model started stage 3 (joint image + text
training) from the Llama that stage 2 (text only) left, as LLaVA starts from Vicuna. Comparing the two (CNA on
text prompts, ``neuronscope recipe base-vs-vlm``) needs that Llama, so this module rebuilds it:

1. the same fresh model (``build_model``, same seed: the initial weights are bit-identical on any machine);
2. stage 1's draws from the training stream are replayed without training the vision tower (stage 2 reads
   neither the vision tower nor its head, only the stream's position);
3. stage 2 exactly as :func:`neuronscope.bundled.train.train` runs it (same batches, optimiser, schedule);
4. the language model and ``lm_head`` saved as a plain ``LlamaForCausalLM`` folder with the tokenizer.

The shipped weights are a further stage 3 of an earlier model (``--init-from``, with the patch-word loss; see
``MODEL_CARD.md``): their base is still the Llama of that earlier model's stage 2, whose config and losses
``training_summary.json`` keeps under ``"base"``. On the GPU that trained them this is bit-for-bit the base;
elsewhere the kernels sum in another order, so it is the base up to that drift. ``base_summary.json`` says how close
it is: the text losses of this run next to those ``training_summary.json`` recorded at the same steps.

Command (about 40 minutes on one CPU core, a minute or two on a GPU)::

    python -m neuronscope.bundled.base_lm --out shapes_base_lm [--device cuda]

Example:
    >>> from transformers import LlamaForCausalLM  # doctest: +SKIP
    >>> base = LlamaForCausalLM.from_pretrained("shapes_base_lm")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from neuronscope.bundled import knowledge, train, world


def text_model_of(llava: Any) -> Any:
    """A ``LlamaForCausalLM`` holding a copy of a LLaVA's language model and ``lm_head`` (same weights).

    Example:
        >>> text_model_of(load_shapes_vlm()[0]).config.model_type  # doctest: +SKIP
        'llama'
    """
    from transformers import LlamaForCausalLM

    text = LlamaForCausalLM(llava.config.text_config)
    state = {f"model.{name}": value for name, value in llava.model.language_model.state_dict().items()}
    state.update({f"lm_head.{name}": value for name, value in llava.lm_head.state_dict().items()})
    text.load_state_dict(state, strict=True)
    text.generation_config.bos_token_id = llava.generation_config.bos_token_id
    text.generation_config.eos_token_id = llava.generation_config.eos_token_id
    text.generation_config.pad_token_id = llava.generation_config.pad_token_id
    return text.eval()


def _replay_vision_draws(rng: random.Random, config: train.TrainConfig) -> None:
    """Advance the training stream past stage 1: each vision step draws ``vision_pretrain_batch`` scenes."""
    for _ in range(config.vision_pretrain_steps * config.vision_pretrain_batch):
        world.sample_scene(rng)


def _loss_drift(history: list[dict[str, Any]], reference: Path | None) -> dict[str, Any]:
    """This run's stage-2 losses against the shipped run's at the same steps (max and final absolute gap)."""
    if reference is None or not reference.is_file():
        return {"reference": None}
    recorded = base_record(reference).get("history", [])
    theirs = {row["step"]: row["text_loss"] for row in recorded if row.get("stage") == "text" and "step" in row}
    ours = {row["step"]: row["text_loss"] for row in history if row.get("stage") == "text" and "step" in row}
    shared = sorted(set(theirs) & set(ours))
    gaps = [abs(theirs[step] - ours[step]) for step in shared]
    return {"reference": str(reference), "steps_compared": len(shared),
            "max_abs_loss_gap": max(gaps) if gaps else None, "final_step": shared[-1] if shared else None,
            "final_loss_ours": ours[shared[-1]] if shared else None,
            "final_loss_shipped": theirs[shared[-1]] if shared else None}


def train_base_lm(out_dir: str | Path, config: train.TrainConfig | None = None, *, log_every: int = 50,
                  reference: Path | None = None) -> dict[str, Any]:
    """Rebuild the bundled VLM's stage-2 language model into ``out_dir``; returns the summary it also writes.

    Args:
        out_dir: the folder (``LlamaForCausalLM`` weights, config, tokenizer, ``base_summary.json``).
        config: the training config (default: the shipped model's, from its ``training_summary.json``).
        log_every: steps between loss records (50 = the shipped run's, so the losses can be compared).
        reference: a ``training_summary.json`` to compare the losses with (default: the shipped one).
    """
    from neuronscope.bundled import SHAPES_VLM_PATH

    reference = SHAPES_VLM_PATH / "training_summary.json" if reference is None else reference
    if config is None:
        config = shipped_config(reference)
    torch.set_num_threads(config.threads)
    if config.device.startswith("cuda"):
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    random.seed(config.seed)
    processor = train.build_processor()
    model = train.build_model(processor.tokenizer, config).to(config.device)
    model.train()
    rng = random.Random(f"neuronscope-train:{config.seed}")
    _replay_vision_draws(rng, config)
    facts = knowledge.facts_dataset()
    params = list(model.model.language_model.named_parameters()) + list(model.lm_head.named_parameters())
    optimizer = train._optimizer(params, config)

    def text_losses() -> dict[str, torch.Tensor]:
        texts = train.text_batch(processor.tokenizer, rng, config.text_pretrain_batch, facts, config.text_mix)
        return {"text_loss": train.answer_loss(model, {k: v.to(config.device) for k, v in texts.items()})}

    history: list[dict[str, Any]] = []
    start = time.time()
    train._run_steps("text", config.text_pretrain_steps, config, optimizer, [p for _, p in params], text_losses,
                     log_every, history, start)
    seconds = round(time.time() - start, 1)
    model.eval().to("cpu")
    text = text_model_of(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text.save_pretrained(out)
    processor.tokenizer.save_pretrained(out)
    summary = {"what": "stage 2 (text only) of neuronscope.bundled.train replayed: the bundled VLM's base LM",
               "config": asdict(config), "train_seconds": seconds, "history": history,
               "drift_from_shipped_run": _loss_drift(history, reference), "torch": torch.__version__}
    (out / "base_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def base_record(reference: Path) -> dict[str, Any]:
    """The record of the from-scratch run in a ``training_summary.json``: its ``"base"`` entry when the weights are a
    further stage 3 of an earlier model (``--init-from``; stages 1 and 2 happened in that run), else the file itself."""
    recorded = json.loads(reference.read_text(encoding="utf-8"))
    return recorded.get("base", recorded)


def shipped_config(reference: Path) -> train.TrainConfig:
    """The :class:`~neuronscope.bundled.train.TrainConfig` of the from-scratch run recorded in a
    ``training_summary.json`` (:func:`base_record`), on the CPU with 1 thread."""
    recorded = base_record(reference)["config"]
    known = {key: value for key, value in recorded.items() if key in train.TrainConfig.__dataclass_fields__}
    if "text_mix" in known:
        known["text_mix"] = tuple(known["text_mix"])
    return replace(train.TrainConfig(**known), device="cpu", threads=1)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m neuronscope.bundled.base_lm --out DIR [--device cuda] [--threads N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the rebuilt base language model")
    parser.add_argument("--device", default="cpu", help='"cpu" (default) or "cuda"')
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    from neuronscope.bundled import SHAPES_VLM_PATH

    config = replace(shipped_config(SHAPES_VLM_PATH / "training_summary.json"), device=args.device,
                     threads=args.threads)
    summary = train_base_lm(args.out, config)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
