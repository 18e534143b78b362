"""The shell around `gen`: completion scripts for bash, zsh and fish (click's), and
GEN_<COMMAND>_<OPTION> environment variables as option defaults."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gen.core.cli import cli

GEN_SCRIPT = Path(sys.executable).parent / "gen"
SHAKESPEARE = Path(__file__).resolve().parent / "data" / "tinyshakespeare-excerpt.txt"
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-iters", "1", "--warmup-iters", "1", "--eval-interval", "2", "--device", "cpu"]


def gen_script(*arguments, **environment):
    result = subprocess.run([str(GEN_SCRIPT), *arguments], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **environment})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("shell, marker", [
    ("bash", "complete -o nosort -F _gen_completion gen"),
    ("zsh", "compdef _gen_completion gen"),
    ("fish", "complete --no-files --command gen"),
])
def test_completion_scripts_for_each_shell(shell, marker):
    script = gen_script(_GEN_COMPLETE=f"{shell}_source")
    assert marker in script
    assert "_GEN_COMPLETE" in script


def test_completion_offers_commands_and_options():
    def complete(line: str) -> list[str]:
        words = line.split()
        output = gen_script(_GEN_COMPLETE="bash_complete", COMP_WORDS=line, COMP_CWORD=str(len(words) - 1))
        return [entry.split(",", 1)[1] for entry in output.splitlines()]

    assert complete("gen tr") == ["train"]
    assert set(complete("gen i")) == {"import", "info"}
    assert complete("gen train --max") == ["--max-iters"]
    assert "--sampler" in complete("gen run --sam")


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


def trained_steps(out: Path) -> int:
    return json.loads((out / "latest" / "config.json").read_text())["step"]


def test_an_environment_variable_sets_an_option_and_beats_the_config_file(corpus, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("max_iters = 6\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["train", "--data", str(corpus), "--out", str(out), "--config", str(config), *TINY],
                                env={"GEN_TRAIN_MAX_ITERS": "4"})
    assert result.exit_code == 0, result.output
    assert trained_steps(out) == 4


def test_the_command_line_beats_the_environment(corpus, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["train", "--data", str(corpus), "--out", str(out), "--max-iters", "2", *TINY],
                                env={"GEN_TRAIN_MAX_ITERS": "4", "GEN_TRAIN_SEED": "7"})
    assert result.exit_code == 0, result.output
    assert trained_steps(out) == 2
    assert json.loads((out / "latest" / "config.json").read_text())["train_args"]["seed"] == 7


def test_a_bad_environment_value_is_a_one_line_error_naming_the_option():
    result = CliRunner().invoke(cli, ["train"], env={"GEN_TRAIN_MAX_ITERS": "many"})
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--max-iters" in result.output and "'many' is not a valid integer" in result.output


def test_help_names_the_variables_and_version_is_not_one():
    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "GEN_TRAIN_MAX_ITERS" in help_text and "GEN_TRAIN_CONFIG" in help_text
    assert "GEN_RUN_THREADS" in CliRunner().invoke(cli, ["run", "--help"]).output
    # GEN_VERSION is not read: --version is an action, not a setting.
    listing = gen_script("plugins", GEN_VERSION="1")
    assert listing.startswith("KIND")


def test_the_command_line_starts_without_heavy_imports():
    """Completion runs `gen` at every Tab: the commands import their machinery when run."""
    script = (
        "import sys; import gen.core.cli; "
        "print([m for m in ('torch', 'onnx', 'onnxruntime', 'onnxruntime_genai', 'matplotlib', 'tokenizers') "
        "if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_repeatable_option_takes_several_values_from_one_variable(monkeypatch):
    monkeypatch.setenv("GEN_RUN_SAMPLER", "top_k:k=40 temperature:t=0.8")
    run = cli.commands["run"]
    context = run.make_context("run", ["model.onnx"])
    assert context.params["samplers"] == ("top_k:k=40", "temperature:t=0.8")
