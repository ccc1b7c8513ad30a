"""Every command, every kind of bad input: exit 2, one ``error:`` line that names the fix, earlier files untouched.

One table drives the test. Each row is a command line built from a workspace that already holds a finished locate
run, an edit, an edited model folder and an explain result; after each row every file of that workspace must be
byte-identical to what it was before (a refused command never damages or half-writes earlier results).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import assert_user_error, save_tiny_llama

NEURONS = "1:3,0:7"


@pytest.fixture(scope="module")
def workspace(tiny_model: Path, located_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Earlier results a user keeps, plus the malformed inputs the rows feed to the commands."""
    from click.testing import CliRunner

    from neuronscope.cli.main import app

    root = tmp_path_factory.mktemp("bad-inputs")
    run = root / "run"
    shutil.copytree(located_run, run)

    def ok(*args: object) -> None:
        result = CliRunner().invoke(app, [str(arg) for arg in args])
        assert result.exit_code == 0, result.output

    ok("edit", "make", "-m", tiny_model, "--neurons", NEURONS, "--out", root / "edit")
    ok("edit", "apply", "--edit", root / "edit", "-m", tiny_model, "--out", root / "edited")
    ok("explain", "--run", run, "--out", root / "explained", "-k", 3)

    damaged = {"cut-scores": ("scores.safetensors", lambda b: b[: len(b) // 3]),
               "bad-scores-json": ("scores.json", lambda b: b[:-7]),
               "bad-neurons-json": ("neurons.json", lambda b: b"{not json"),
               "no-scores": ("scores.safetensors", None)}
    for name, (file, change) in damaged.items():
        shutil.copytree(run, root / name)
        path = root / name / file
        if change is None:
            path.unlink()
        else:
            path.write_bytes(change(path.read_bytes()))

    (root / "empty-folder").mkdir()
    (root / "empty.jsonl").write_text("")
    (root / "bad.jsonl").write_text('{"prompt": "grass is", "target": "green"}\n{"prompt": "sky is", "target"\n')
    (root / "no-prompt.jsonl").write_text('{"text": "grass is"}\n')
    (root / "unknown-word.jsonl").write_text('{"prompt": "grass is", "target": "zyzzyva"}\n')
    unknown = root / "unknown-architecture"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "frobnicator", "architectures": ["FrobLM"]}))
    save_tiny_llama(root / "other-model", seed=1)
    (root / "config.yaml").write_text("top_k: [1, 2\n")
    return root


def rows(m: str, w: Path, stories: Path) -> list[tuple[str, list[object], tuple[str, ...]]]:
    """(name, argv, fragments the one error line must hold). ``m`` is the tiny model, ``w`` the workspace."""
    run = w / "run"
    count = iter(range(1000))

    def fresh() -> Path:  # an output folder no other row uses (a refused row must not create it)
        return w / f"out-{next(count)}"

    return [
        # locate
        ("locate: no model", ["locate", "-m", w / "missing-model", "--prompt", "grass is", "--target", "green",
                              "--out", fresh()], ("missing-model",)),
        ("locate: unknown architecture", ["locate", "-m", w / "unknown-architecture", "--prompt", "grass is",
                                          "--target", "green", "--out", fresh()], ("frobnicator",)),
        ("locate: onto an earlier run", ["locate", "-m", m, "--prompt", "grass is", "--target", "green",
                                         "--out", run], ("--resume", "--overwrite")),
        ("locate: empty prompts", ["locate", "-m", m, "--prompts", w / "empty.jsonl", "--out", fresh()],
         ("empty.jsonl",)),
        ("locate: bad JSONL", ["locate", "-m", m, "--prompts", w / "bad.jsonl", "--out", fresh()],
         ("bad.jsonl", "line 2")),
        ("locate: JSONL without prompt", ["locate", "-m", m, "--prompts", w / "no-prompt.jsonl", "--out", fresh()],
         ("prompt",)),
        ("locate: word not in the vocabulary", ["locate", "-m", m, "--prompts", w / "unknown-word.jsonl",
                                                "--out", fresh()], ("zyzzyva",)),
        ("locate: multi-piece target", ["locate", "-m", stories, "--prompt", "Once upon a time there was a",
                                        "--target", "girl", "--out", fresh()], ("--first-piece",)),
        ("locate: unknown method", ["locate", "-m", m, "--prompt", "grass is", "--target", "green", "--method",
                                    "telepathy", "--out", fresh()], ("telepathy",)),
        ("locate: top-k 0", ["locate", "-m", m, "--prompt", "grass is", "--target", "green", "--top-k", 0,
                             "--out", fresh()], ("--top-k",)),
        ("locate: layer out of range", ["locate", "-m", m, "--prompt", "grass is", "--target", "green",
                                        "--layers", "0,9", "--out", fresh()], ("9",)),
        ("locate: bad config file", ["locate", "--config", w / "config.yaml", "-m", m, "--prompt", "grass is",
                                     "--out", fresh()], ("config.yaml",)),
        # explain
        ("explain: no run folder", ["explain", "--run", w / "nothing"], ("nothing",)),
        ("explain: cut scores", ["explain", "--run", w / "cut-scores", "--out", fresh()], ("scores.safetensors",)),
        ("explain: damaged neurons.json", ["explain", "--run", w / "bad-neurons-json", "--out", fresh()],
         ("neurons.json",)),
        ("explain: neuron outside the model", ["explain", "-m", m, "--neurons", "5:1"], ("5:1",)),
        ("explain: onto an earlier result", ["explain", "--run", run, "--out", w / "explained"], ("--overwrite",)),
        # intervene
        ("intervene: damaged run", ["intervene", "--run", w / "bad-scores-json", "--mode", "suppress"],
         ("scores.json",)),
        ("intervene: unknown mode", ["intervene", "--run", run, "--mode", "melt"], ("--mode",)),
        ("intervene: empty folder", ["intervene", "--run", w / "empty-folder", "--mode", "suppress"],
         ("empty-folder",)),
        # evaluate
        ("evaluate: cut scores", ["evaluate", w / "cut-scores", "--draws", 2], ("scores.safetensors",)),
        ("evaluate: scores missing", ["evaluate", w / "no-scores", "--draws", 2], ("scores.safetensors",)),
        ("evaluate: zero draws", ["evaluate", run, "--draws", 0], ("--draws",)),
        # edit
        ("edit make: unknown kind", ["edit", "make", "-m", m, "--neurons", NEURONS, "--kind", "melt",
                                     "--out", fresh()], ("--kind",)),
        ("edit make: onto an earlier edit", ["edit", "make", "-m", m, "--neurons", NEURONS, "--out", w / "edit"],
         ("--overwrite",)),
        ("edit make: damaged run", ["edit", "make", "--run", w / "cut-scores", "--out", fresh()],
         ("cut-scores",)),
        ("edit apply: wrong model", ["edit", "apply", "--edit", w / "edit", "-m", w / "other-model",
                                     "--out", fresh()], ("made against",)),
        ("edit apply: no edit", ["edit", "apply", "--edit", w / "nothing", "--out", fresh()], ("nothing",)),
        ("edit apply: onto the edited model", ["edit", "apply", "--edit", w / "edit", "-m", m,
                                               "--out", w / "edited"], ("--overwrite",)),
        ("edit revert: not an edited model", ["edit", "revert", "-m", m, "--out", fresh()], ("edit apply",)),
        ("edit export: no edit", ["edit", "export", "--edit", w / "nothing", "--out", fresh()], ("nothing",)),
        # report, models, recipe, demo
        ("report: empty folder", ["report", w / "empty-folder"], ("empty-folder",)),
        ("report: damaged run", ["report", w / "bad-scores-json"], ("scores.json",)),
        ("report: no folder", ["report", w / "nothing"], ("nothing",)),
        ("recipe: unknown recipe", ["recipe", "telepathy"], ("telepathy",)),
        ("recipe: missing data", ["recipe", "qrnca", "-m", m, "--data", w / "no-data", "--out", fresh()],
         ("no-data",)),
        ("demo: onto an earlier run", ["demo", "--out", run], ("--overwrite",)),
    ]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_every_bad_input_is_one_line_exit_2_and_changes_nothing(cli, tiny_model, workspace, shared_dir) -> None:
    stories = shared_dir / "models" / "stories260k"
    before = _snapshot(workspace)
    failures = []
    for name, argv, fragments in rows(str(tiny_model), workspace, stories):
        result = cli(*argv)
        try:
            lines = assert_user_error(result, *fragments)
            assert len(lines) == 1, lines
        except AssertionError as error:
            failures.append(f"{name}: rc {result.exit_code}: {result.output[-300:]!r} ({error})")
        after = _snapshot(workspace)
        if after != before:
            changed = sorted(set(after.items()) ^ set(before.items()))
            failures.append(f"{name}: changed earlier files {changed[:4]}")
            before = after
    created = sorted(path.name for path in workspace.glob("out-*"))
    assert not failures and not created, "\n".join(failures + [f"refused commands created {created}"])
