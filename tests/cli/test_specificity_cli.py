"""Bad selection and background options of locate / intervene: one line naming the fix, exit 2, before loading."""

from __future__ import annotations

from cli_helpers import assert_user_error


def test_bad_selection_options_are_refused(cli, tiny_model, prompts_file, tmp_path) -> None:
    base = ("locate", "-m", tiny_model, "--prompt", "the capital of france is", "--target", "paris")
    assert_user_error(cli(*base, "--selection", "best", "--out", tmp_path / "a"), "--selection")
    assert_user_error(cli(*base, "--agreement", "2", "--out", tmp_path / "b"), "--agreement 2", "1 given")
    assert_user_error(cli("locate", "-m", tiny_model, "--prompts", prompts_file, "--agreement", "9", "--out",
                          tmp_path / "c"), "--agreement 9", "5 given")
    assert_user_error(cli(*base, "--selection", "inverse-frequency", "--strength", "2", "--out", tmp_path / "d"),
                      "--strength 2")
    assert_user_error(cli(*base, "--background", tmp_path / "missing.jsonl", "--out", tmp_path / "e"),
                      "missing.jsonl")
    assert_user_error(cli("intervene", "-m", tiny_model, "--neurons", "0:1", "--prompt", "x", "--background",
                          tmp_path / "missing.jsonl"), "missing.jsonl")
    assert not any((tmp_path / name).exists() for name in "abcde")
