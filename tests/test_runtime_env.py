"""The torch line, end to end: a fresh virtual environment with only `pip install .`.

There torch cannot be imported, `gen plugins` lists the samplers and tokenizers,
and a model trained and exported in the main environment generates with `gen run`
and with the Python `OnnxModel` API the same greedy text as in the main environment;
with the serve extra added, `gen serve` answers a completion with that text too; with the
structured extra, `gen run --regex` gives the main environment's constrained text.
A third-party model plugin (examples/gen-mlp) installs there with pip, loads without
torch, and its export there gives the greedy text of `gen sample` in the main environment.
Set GEN_RUNTIME_VENV to keep the environment at a path of your choosing.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
CORPUS = REPOSITORY / "tests" / "data" / "tinyshakespeare-excerpt.txt"
MAIN_BIN = Path(sys.executable).parent
PROMPT = "ROMEO:"
GENERATE_ARGUMENTS = ["--prompt", PROMPT, "--sampler", "greedy", "--max-new-tokens", "120", "--seed", "0"]


def run(command, **kwargs):
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def runtime_python(tmp_path_factory) -> Path:
    """A fresh virtual environment with the plain (runtime) install of this repository."""
    location = os.environ.get("GEN_RUNTIME_VENV")
    venv = Path(location).resolve() if location else tmp_path_factory.mktemp("runtime") / "venv"
    shutil.rmtree(venv, ignore_errors=True)
    run([sys.executable, "-m", "venv", venv])
    build_copy = tmp_path_factory.mktemp("source") / "gen"  # build outside the work tree
    shutil.copytree(REPOSITORY, build_copy, ignore=shutil.ignore_patterns(".venv*", ".git", "out*", "*.onnx"))
    run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", build_copy])
    return venv / "bin" / "python"


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory) -> Path:
    """A small GPT trained for a few steps and exported, in the main environment."""
    work = tmp_path_factory.mktemp("export")
    corpus = work / "corpus.txt"
    corpus.write_text(CORPUS.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    run([MAIN_BIN / "gen", "train", "--data", corpus, "--out", work / "checkpoint", "--n-layer", "2",
         "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
         "--max-iters", "40", "--eval-interval", "20", "--seed", "1"])
    run([MAIN_BIN / "gen", "export", work / "model.onnx", "--checkpoint", work / "checkpoint"])
    return work / "model.onnx"


def test_torch_is_absent_in_the_runtime_environment(runtime_python):
    result = subprocess.run([runtime_python, "-c", "import torch"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "No module named 'torch'" in result.stderr


@pytest.mark.parametrize("arguments", [
    ["train", "--data", CORPUS, "--max-iters", "1"],
    ["sample", "--checkpoint", "CHECKPOINT"],
    ["import", "nanogpt", "CKPT", "--meta", "META", "--out", "OUT"],
    ["eval", "--checkpoint", "CHECKPOINT"],
    ["export", "MODEL.onnx", "--checkpoint", "CHECKPOINT"],
], ids=["train", "sample", "import", "eval", "export"])
def test_commands_that_need_torch_say_which_extra_to_install(runtime_python, tmp_path, arguments):
    """Without torch, each says so in one line instead of a ModuleNotFoundError traceback."""
    (tmp_path / "CHECKPOINT").mkdir()
    (tmp_path / "CKPT").write_bytes(b"x")
    (tmp_path / "META").write_bytes(b"x")
    result = subprocess.run([str(runtime_python.parent / "gen"), *map(str, arguments)], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: gen "), result.stderr
    assert "pip install 'gen[train]'" in result.stderr


def test_gen_plugins_lists_samplers_and_tokenizers_without_torch(runtime_python):
    listing = run([runtime_python.parent / "gen", "plugins"])
    rows = {tuple(line.split()[:2]) for line in listing.splitlines()[1:]}
    for sampler in ("greedy", "multinomial", "temperature", "top_k", "top_p"):
        assert ("sampler", sampler) in rows
    for tokenizer in ("char", "byte", "bpe"):
        assert ("tokenizer", tokenizer) in rows


def test_an_export_runs_without_torch_and_matches_the_main_environment(runtime_python, exported_model):
    in_main = run([MAIN_BIN / "gen", "run", exported_model, *GENERATE_ARGUMENTS])
    in_runtime = run([runtime_python.parent / "gen", "run", exported_model, *GENERATE_ARGUMENTS])
    assert in_runtime == in_main
    assert in_main.startswith(PROMPT) and len(in_main) > len(PROMPT) + 50

    through_api = run([runtime_python, "-c", (
        "import sys, gen.runtime\n"
        "generator = gen.runtime.OnnxModel(sys.argv[1])\n"
        f"text = generator.generate([{PROMPT!r}], sampler='greedy', max_new_tokens=120)[0]\n"
        "assert 'torch' not in sys.modules\n"
        "sys.stdout.write(text)\n"
    ), exported_model])
    assert PROMPT + through_api in in_main


def test_gen_serve_installs_as_an_extra_and_serves_without_torch(runtime_python, exported_model, tmp_path):
    source = tmp_path / "gen"  # build from a copy, outside the work tree
    shutil.copytree(REPOSITORY, source, ignore=shutil.ignore_patterns(".venv*", ".git", "out*", "*.onnx"))
    run([runtime_python, "-m", "pip", "install", "--quiet", f"{source}[serve]"])
    in_main = run([MAIN_BIN / "gen", "run", exported_model, *GENERATE_ARGUMENTS])
    server = subprocess.Popen([runtime_python.parent / "gen", "serve", exported_model, "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first_line = server.stdout.readline()
        assert " at http://127.0.0.1:" in first_line, first_line + server.stderr.read()
        url = first_line.split(" at ")[1].split()[0]
        body = json.dumps({"prompt": PROMPT, "max_tokens": 120, "temperature": 0}).encode()
        request = urllib.request.Request(f"{url}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            text = json.loads(response.read())["choices"][0]["text"]
        assert PROMPT + text in in_main  # temperature 0 is greedy, as GENERATE_ARGUMENTS
        with urllib.request.urlopen(f"{url}/", timeout=60) as page:
            assert b"gen playground" in page.read()  # the page's files were installed
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def test_structured_generation_installs_as_an_extra_and_constrains_without_torch(runtime_python, exported_model,
                                                                                tmp_path):
    source = tmp_path / "gen"
    shutil.copytree(REPOSITORY, source, ignore=shutil.ignore_patterns(".venv*", ".git", "out*", "*.onnx"))
    run([runtime_python, "-m", "pip", "install", "--quiet", f"{source}[structured]"])
    arguments = [*GENERATE_ARGUMENTS, "--regex", "[a-z]+( [a-z]+){0,3}"]
    in_main = run([MAIN_BIN / "gen", "run", exported_model, *arguments])
    in_runtime = run([runtime_python.parent / "gen", "run", exported_model, *arguments])
    assert in_runtime == in_main
    assert re.fullmatch(r"[a-z]+( [a-z]+){0,3}", in_main.removeprefix(PROMPT).split("\n")[0])
    checked = run([runtime_python, "-c", "import sys, gen.plugins.constraints, llguidance; print('torch' in sys.modules)"])
    assert checked.strip() == "False"


def finished_word_repeats(output: str) -> list[str]:
    """The words of `gen run`'s output that repeat the word just before them, as
    examples/gen-no-repeat-word reads words (letters and apostrophes, any case). The
    last word is left out: generation may have stopped inside it."""
    text = re.sub(r"\n-+\n?$", "", output)  # the line that closes each sample
    words, word = [], ""
    for char in text:
        if char.isalpha() or char in "'\u2019":
            word += char
        elif word:
            words.append(word.casefold())
            word = ""
    return [word for previous, word in zip(words, words[1:]) if word == previous]


def test_a_third_party_filter_installs_with_pip_and_reads_the_text_so_far_without_torch(
        runtime_python, exported_model, tmp_path):
    # Build from a copy, so that pip's build files stay out of the work tree.
    source = tmp_path / "gen-no-repeat-word"
    shutil.copytree(REPOSITORY / "examples" / "gen-no-repeat-word", source,
                    ignore=shutil.ignore_patterns("__pycache__", ".hypothesis", "build", "*.egg-info"))
    run([runtime_python, "-m", "pip", "install", "--quiet", source])
    gen = runtime_python.parent / "gen"

    listing = run([gen, "plugins"])
    rows = {tuple(line.split()[:3]) for line in listing.splitlines()}
    assert ("sampler", "no_repeat_word", "gen-no-repeat-word") in rows
    assert "failed" not in listing

    def generate(*arguments):
        result = subprocess.run([gen, "run", exported_model, *arguments, "--sampler", "temperature:t=1.2",
                                 "--seed", "3", "--max-new-tokens", "300"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "Warning" not in result.stderr and "failed" not in result.stderr, result.stderr
        return result.stdout

    output = generate("--sampler", "no_repeat_word")
    assert len(output) > 200 and finished_word_repeats(output) == [], output
    # Favouring "a" and spaces makes "a a" likely: the same run repeats words without
    # the filter and never with it.
    favour_a = ["--logit-bias", "a=4", "--logit-bias", " =4"]
    assert finished_word_repeats(generate(*favour_a))
    output = generate(*favour_a, "--sampler", "no_repeat_word")
    assert output.count("a") > 50 and finished_word_repeats(output) == [], output

    bad_option = subprocess.run([gen, "run", exported_model, "--sampler", "no_repeat_word:case_sensitive=maybe"],
                                capture_output=True, text=True)
    assert bad_option.returncode != 0
    assert bad_option.stderr.count("\n") == 1 and "case_sensitive" in bad_option.stderr, bad_option.stderr


MLP_PLUGIN = REPOSITORY / "examples" / "gen-mlp"
# gen's CLI with the gen-mlp plugin registered in-process: the main environment does not
# have the package installed, only its source in the repository.
GEN_WITH_MLP = f"""\
import sys
sys.path.insert(0, {str(MLP_PLUGIN)!r})
import gen_mlp
from gen.core.cli import cli
from gen.core.registry import get_plugins
get_plugins().register(gen_mlp, "gen-mlp")
cli(sys.argv[1:], prog_name="gen")
"""


@pytest.fixture(scope="module")
def mlp_export(tmp_path_factory) -> tuple[Path, str]:
    """A small gen-mlp model trained and exported in the main environment, with the
    greedy text `gen sample` gives for it there."""
    work = tmp_path_factory.mktemp("mlp-export")
    corpus = work / "corpus.txt"
    corpus.write_text(CORPUS.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    script = work / "gen_with_mlp.py"
    script.write_text(GEN_WITH_MLP, encoding="utf-8")
    gen_with_mlp = [sys.executable, script]
    environment = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}  # leave the user cache alone
    run([*gen_with_mlp, "train", "--model", "mlp:context=4,hidden=64", "--data", corpus, "--out", work / "checkpoint",
         "--batch-size", "8", "--max-iters", "40", "--eval-interval", "20", "--seed", "1"], env=environment)
    sampled = run([*gen_with_mlp, "sample", "--checkpoint", work / "checkpoint", *GENERATE_ARGUMENTS], env=environment)
    run([*gen_with_mlp, "export", work / "mlp.onnx", "--checkpoint", work / "checkpoint"], env=environment)
    return work / "mlp.onnx", sampled


def test_a_model_plugin_installs_and_its_export_runs_without_torch(runtime_python, mlp_export, tmp_path):
    # Build from a copy, so that pip leaves no build/ or *.egg-info in the work tree.
    source = tmp_path / "gen-mlp"
    shutil.copytree(MLP_PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    run([runtime_python, "-m", "pip", "install", "--quiet", source])

    # The hook module loads without torch; the model's options would need it.
    listing = json.loads(run([runtime_python.parent / "gen", "plugins", "--json"]))
    assert listing["failed"] == []
    assert {"kind": "model", "name": "mlp", "provider": "gen-mlp"}.items() <= next(
        plugin for plugin in listing["plugins"] if plugin["name"] == "mlp").items()

    export, sampled_in_main = mlp_export
    ran_in_runtime = run([runtime_python.parent / "gen", "run", export, *GENERATE_ARGUMENTS])
    assert ran_in_runtime == sampled_in_main
    assert sampled_in_main.startswith(PROMPT) and len(sampled_in_main) > len(PROMPT) + 50
