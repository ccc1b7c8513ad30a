"""``icl-bias`` on the toy SST-2 model, with the heads of a ``recipe icl`` run (``--heads-from``): the bias before
re-weighting equals one-prompt-at-a-time forwards (p(favoured) − ½ and the favoured-prediction rate − ½ over the
label set, favoured = the majority class / the last demonstration's class), the prompts are the 3:1 / 1:3 mixes and
the sorted / reverse-sorted orders of the same queries, the heads, model and label kind are the run's, the files
read back; bad input is one line and exit 2 before anything is written."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import LlamaForCausalLM

import neuronscope
from helpers.icl_words import save_icl_toy, word_tokenizer
from neuronscope.cli.main import app
from neuronscope.results.base import load_result


def _bias_by_hand(model, tokenizer, prompts: list[dict], kind: str) -> dict[str, float]:
    probability, rate, correct = [], [], []
    for prompt in prompts:
        ids = tokenizer.convert_tokens_to_ids(prompt["label_words"])
        with torch.no_grad():
            p = model(**tokenizer(prompt["text"], return_tensors="pt")).logits[0, -1, ids].double().softmax(-1)
        classes = prompt["demo_classes"]
        favoured = max(set(classes), key=classes.count) if kind == "majority" else classes[-1]
        probability.append(float(p[favoured]))
        rate.append(float(int(p.argmax()) == favoured))
        correct.append(float(int(p.argmax()) == prompt["query_class"]))
    n = len(prompts)
    return {"probability": sum(probability) / n - 0.5, "rate": sum(rate) / n - 0.5, "accuracy": sum(correct) / n}


def test_icl_bias_before_equals_forwards_by_hand_with_the_heads_of_a_recipe_run(tmp_path) -> None:
    model_dir, data_dir = save_icl_toy(tmp_path / "toy")
    recipe = tmp_path / "icl"
    neuronscope.run("recipe icl", model=str(model_dir), data=data_dir, out=recipe, limit=4, draws=1,
                    n_other_dataset=0, n_eval_other=0, fractions=[0.25], n_bias=2, n_attribution=2, n_merge=2)
    kind = json.loads((recipe / "metrics.json").read_text())["label_kind"]
    out = tmp_path / "bias"
    done = CliRunner().invoke(app, ["icl-bias", "--heads-from", str(recipe), "--top-heads", "2", "--data",
                                    str(data_dir), "--n-bias", "3", "--n-calibration", "4", "--draws", "2",
                                    "--out", str(out)])
    assert done.exit_code == 0, done.output
    top = load_result(recipe / "heads_lpi.json").top(2).tolist()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["label_kind"] == kind and metrics["heads"] == [f"{layer}.{head}" for layer, head in top]
    prompts = json.loads((out / "prompts.json").read_text())
    model, tokenizer = LlamaForCausalLM.from_pretrained(model_dir).eval(), word_tokenizer()
    for name in ("majority", "recency"):
        result = load_result(out / f"bias_{name}.json")
        rows = prompts[f"bias_{name}"]
        assert result.heads == top and result.n_prompts == len(rows) == 6 and len(result.random) == 2
        assert result.before == pytest.approx(_bias_by_hand(model, tokenizer, rows, name), abs=1e-5)
        assert metrics["bias"][name]["mitigated"] == pytest.approx(result.mitigated)
        queries = {}
        for row in rows:
            queries.setdefault(row["text"].rsplit("Review: ", 1)[1], []).append(row["demo_classes"])
        assert len(queries) == 3  # each query twice: favouring each class once
        for mixes in queries.values():
            if name == "majority":
                assert sorted(sorted(m) for m in mixes) == [[0, 0, 0, 1], [0, 1, 1, 1]]
            else:
                assert sorted(mixes) == [[0, 0, 1, 1], [1, 1, 0, 0]]
    calibration = {row["text"].rsplit("Review: ", 1)[1] for row in prompts["calibration"]}
    assert not calibration & {row["text"].rsplit("Review: ", 1)[1] for row in prompts["bias_majority"]}
    assert (out / "tables" / "bias.csv").read_text().count("\n") == 1 + 2 * (2 + 2)
    assert (out / "plots" / "5_bias" / "bias_before_after.png").stat().st_size > 1000
    assert ">Bias<" in (out / "report.html").read_text()


@pytest.mark.parametrize(("args", "fragment"), [
    ([], "either as --heads"),
    (["--heads", "1.0", "--heads-from", "x"], "either as --heads"),
    (["--heads", "1..0"], "layer.head pairs"),
    (["--heads-from", "nowhere"], "not a finished 'neuronscope recipe icl' folder"),
    (["--heads", "1.0", "--data", "nowhere"], "icl/sst2_872.tsv"),
])
def test_icl_bias_bad_input(tmp_path, args, fragment) -> None:
    data = tmp_path / "data"
    (data / "icl").mkdir(parents=True)
    (data / "icl" / "sst2_872.tsv").write_text("sentence\tlabel\na good film\t1\n")
    out = tmp_path / "never"
    args = [str(tmp_path / a) if a == "nowhere" else a for a in args]
    base = [] if "--data" in args else ["--data", str(data)]
    result = CliRunner().invoke(app, ["icl-bias", "-m", str(tmp_path / "no-model"), *base, *args, "--out", str(out)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], result.stderr
    assert not out.exists()
