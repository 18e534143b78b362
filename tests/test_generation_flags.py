"""The flags people type first on `gen run` / `gen sample`: the sampling shortcuts (the same
chain as --sampler, in the server's order), -p, --prompt-file and standard input, the speed
summary, the closing --json record, the hint for a sampler without a shortcut, and shell
completion of plugin names. Each runs the real command through click's CliRunner on a real
ONNX export."""
from __future__ import annotations

import json

import pytest
from click.shell_completion import ShellComplete
from click.testing import CliRunner

from gen.core.cli import cli
from gen.core.sampling import SHORTCUT_ORDER, shortcut_recipes
from gen.runtime.api import Limits, sampler_recipes


def gen(*arguments, **kwargs):
    return CliRunner().invoke(cli, [str(argument) for argument in arguments], **kwargs)


@pytest.mark.parametrize("shortcuts, specs", [
    (["--temperature", "0.8", "--top-k", "40"], ["temperature:t=0.8", "top_k:k=40"]),
    # Typed in any order, they run in one: penalty, temperature, top_k, top_p, min_p.
    (["--min-p", "0.05", "--top-p", "0.9", "--repetition-penalty", "1.3", "--temperature", "1.5"],
     ["repetition_penalty:penalty=1.3", "temperature:t=1.5", "top_p:p=0.9", "min_p:p=0.05"]),
    (["--temperature", "0", "--top-k", "5"], ["greedy"]),
])
def test_shortcuts_print_what_the_same_sampler_specs_print(small_gpt_onnx, shortcuts, specs):
    common = ["run", small_gpt_onnx, "-p", "ROMEO:", "--seed", 3, "--max-new-tokens", 80]
    short = gen(*common, *shortcuts)
    spelled = gen(*common, *[part for spec in specs for part in ("--sampler", spec)])
    assert short.exit_code == 0, short.output
    assert short.stdout == spelled.stdout and short.stdout.startswith("ROMEO:")


def test_the_shortcuts_and_the_servers_fields_build_one_chain_in_one_order():
    body = {"temperature": 0.7, "top_k": 20, "top_p": 0.95, "min_p": 0.1, "repetition_penalty": 1.2,
            "presence_penalty": 0.5}
    served = [recipe.spec for recipe in sampler_recipes(body, Limits())]
    shared = [recipe.spec for recipe in shortcut_recipes(**body)]
    assert served == shared == ["repetition_penalty:penalty=1.2", "penalties:presence=0.5,frequency=0.0",
                                "temperature:t=0.7", "top_k:k=20", "top_p:p=0.95", "min_p:p=0.1"]
    assert list(SHORTCUT_ORDER) == ["repetition_penalty", "presence_penalty", "frequency_penalty", "temperature",
                                    "top_k", "top_p", "min_p"]
    assert shortcut_recipes(temperature=1, top_k=0, top_p=1, min_p=0, repetition_penalty=1) == []


def test_shortcuts_beside_sampler_specs_are_one_clear_error(small_gpt_onnx):
    result = gen("run", small_gpt_onnx, "--temperature", "0.8", "--sampler", "top_k:k=4")
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "Error: give --sampler specs or the shortcuts (--temperature), not both; e.g. --sampler temperature:t=0.8 "
        "--sampler top_k:k=40 or --temperature 0.8 --top-k 40"]


def test_a_shortcut_out_of_range_is_refused_by_click(small_gpt_onnx):
    result = gen("run", small_gpt_onnx, "--top-p", "0")
    assert result.exit_code == 2 and "Invalid value for '--top-p'" in result.output


def test_the_prompt_comes_from_p_a_file_or_standard_input(small_gpt_onnx, tmp_path):
    common = ["run", small_gpt_onnx, "--seed", 5, "--max-new-tokens", 40]
    typed = gen(*common, "--prompt", "JULIET:\nO")
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("JULIET:\nO", encoding="utf-8")
    from_file = gen(*common, "--prompt-file", prompt_file)
    from_stdin = gen(*common, "-p", "-", input="JULIET:\nO")
    from_stdin_file = gen(*common, "--prompt-file", "-", input="JULIET:\nO")
    assert typed.exit_code == 0 and typed.stdout.startswith("JULIET:\nO")
    assert from_file.stdout == from_stdin.stdout == from_stdin_file.stdout == typed.stdout
    both = gen(*common, "-p", "x", "--prompt-file", prompt_file)
    assert both.exit_code == 1 and both.output == "Error: give --prompt or --prompt-file, not both\n"


def test_stats_print_tokens_seconds_and_speed_to_standard_error_only(small_gpt_onnx):
    common = ["run", small_gpt_onnx, "-p", "ROMEO:", "--seed", 1, "--max-new-tokens", 30, "--num-samples", 2]
    quiet = gen(*common)  # not a terminal: nothing is added
    loud = gen(*common, "--stats")
    assert quiet.stderr == "" and loud.stdout == quiet.stdout
    [line] = loud.stderr.splitlines()
    assert line.startswith("gen: 60 tokens in ") and line.endswith(" tokens/s")


def test_json_ends_each_sample_with_its_finish_reason_and_usage(small_gpt_onnx):
    result = gen("run", small_gpt_onnx, "-p", "ROMEO:", "--seed", 2, "--max-new-tokens", 12, "--num-samples", 2,
                 "--json")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    closing = [record for record in records if "finish_reason" in record]
    assert closing == [{"sample": sample, "finish_reason": "length",
                        "usage": {"prompt_tokens": 6, "completion_tokens": 12, "total_tokens": 18}}
                       for sample in (0, 1)]
    assert records[12] == closing[0] and records[-1] == closing[1]  # each after its sample's 12 tokens
    greedy = ["run", small_gpt_onnx, "-p", "ROMEO:", "--sampler", "greedy", "--max-new-tokens", 200]
    stop = gen(*greedy).stdout[len("ROMEO:"):][5:7]  # what greedy writes after 5 characters
    stopped = gen(*greedy, "--json", "--stop", stop)
    last = json.loads(stopped.stdout.splitlines()[-1])
    assert last["finish_reason"] == "stop" and last["usage"]["completion_tokens"] < 200


@pytest.mark.parametrize("typed, hint", [
    ("--temperatur", "Did you mean '--temperature'?"),
    ("--no-repeat-ngram", "e.g. --sampler no_repeat_ngram"),
    ("--mirostat-tau", "e.g. --sampler mirostat"),
])
def test_an_unknown_sampling_option_points_to_the_shortcut_or_sampler(small_gpt_onnx, typed, hint):
    result = gen("run", small_gpt_onnx, typed, "1")
    assert result.exit_code == 2 and f"No such option '{typed}'" in result.output and hint in result.output


def completions(arguments, incomplete):
    completer = ShellComplete(cli, {}, "gen", "_GEN_COMPLETE")
    return [item.value for item in completer.get_completions(arguments, incomplete)]


def test_shell_completion_names_samplers_tokenizers_and_models():
    assert completions(["run", "model.onnx", "--sampler"], "top") == ["top_k", "top_p"]
    assert completions(["sample", "--sampler"], "top_k:") == ["top_k:k="]
    assert "bpe" in completions(["train", "--tokenizer"], "")
    assert completions(["train", "--model"], "gp") == ["gpt"]
