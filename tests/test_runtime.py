"""`gen run` and gen.runtime: generation on onnxruntime, its parity with torch, bad files, no torch.

The models are exported once per module; every test runs real onnxruntime sessions.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from click.testing import CliRunner

from conftest import SHAKESPEARE
from gen.core import hookimpl
from gen.core.training.checkpoint import save_checkpoint
from gen.core.registry import get_plugins
from gen.core.cli import GenGroup
from gen.core.cli.commands import sample
from gen.core.errors import GenError
from gen.core.cli.generation_options import SAMPLE_SEPARATOR
from gen.core.generation import generate_text
from gen.core.sampling import Sampling, build_sampler_chain
from gen.core.scoring import exact_loss
from gen.core.tokenizer import tokenizer_to_dict
from gen.core.training.torch_backend import TorchBackend
from gen.core.cli.export_commands import export
from gen.export.onnx_export import ExportOptions, export_model
from gen.plugins.bigram import BigramLanguageModel
from gen.runtime.artifact import FORMAT_VERSION
from gen.core.cli.runtime_commands import run
from gen.core.cli.backends import open_backend
from gen.runtime.onnx_model import OnnxModel

BLOCK_SIZE = 16  # conftest's small GPT
REPOSITORY = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint_dir(gpt, tokenizer, tmp_path_factory):
    return save_checkpoint(
        tmp_path_factory.mktemp("run") / "checkpoint", model=gpt, model_name="gpt",
        tokenizer_document=tokenizer_to_dict("char", tokenizer), train_args={"data": str(SHAKESPEARE)}, step=0,
    )


@pytest.fixture(scope="module")
def gpt_path(checkpoint_dir, tmp_path_factory):
    """The checkpoint exported with `gen export`, as a user would."""
    path = tmp_path_factory.mktemp("gpt") / "model.onnx"
    result = CliRunner().invoke(cli_group(), ["export", str(path), "--checkpoint", str(checkpoint_dir)])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def generator(gpt_path):
    return OnnxModel(gpt_path)


@pytest.fixture(scope="module")
def bigram(tokenizer):
    torch.manual_seed(0)
    model = BigramLanguageModel.from_config({"vocab_size": tokenizer.vocab_size, "block_size": 8})
    with torch.no_grad():
        torch.nn.init.normal_(model.token_embedding_table.weight, std=3.0)
    return model.eval()


@pytest.fixture(scope="module")
def bigram_path(bigram, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("bigram") / "bigram.onnx"
    export_model(bigram, path, tokenizer_document=tokenizer_to_dict("char", tokenizer),
                 options=ExportOptions(progress=None))
    return path


def torch_text(model, tokenizer, prompts, sampler_specs, seed, max_new_tokens, use_cache=True):
    """What the torch generator writes: the shared loop on a TorchBackend."""
    backend = TorchBackend(model, device="cpu", use_cache=use_cache)
    texts = [[] for _ in prompts]
    rng = np.random.default_rng(seed)
    sampler = build_sampler_chain(sampler_specs)
    for step in generate_text(backend, tokenizer, prompts, sampler, rng, max_new_tokens):
        for text, piece in zip(texts, step.pieces):
            text.append(piece)
    return ["".join(text) for text in texts]


# --- parity with torch ----------------------------------------------------------------


def test_greedy_text_equals_torch_for_600_tokens_past_block_size(gpt, tokenizer, generator):
    prompts = ["ROMEO:", "\n"]
    expected = torch_text(gpt, tokenizer, prompts, ["greedy"], seed=0, max_new_tokens=600)
    got = generator.generate(prompts, sampler="greedy", max_new_tokens=600)
    assert got == expected
    assert all(len(text) == 600 for text in got)  # char tokens: one character each, no stop


@pytest.mark.parametrize("specs", [["multinomial"], ["top_p:p=0.9"], ["top_k:k=5", "temperature:t=0.8"]])
def test_sampled_text_equals_torch_with_the_same_seed(gpt, tokenizer, generator, specs):
    expected = torch_text(gpt, tokenizer, ["JULIET:"], specs, seed=7, max_new_tokens=300)
    assert generator.generate(["JULIET:"], sampler=specs, seed=7, max_new_tokens=300) == expected
    other_seed = generator.generate(["JULIET:"], sampler=specs, seed=8, max_new_tokens=300)
    assert other_seed != expected  # the seed matters


def test_bigram_text_equals_torch_without_a_cache(bigram, tokenizer, bigram_path):
    generator = OnnxModel(bigram_path)
    assert not generator.uses_cache and generator.block_size == 8
    expected = torch_text(bigram, tokenizer, ["to be"], ["top_k:k=3"], seed=3, max_new_tokens=100, use_cache=False)
    assert generator.generate(["to be"], sampler="top_k:k=3", seed=3, max_new_tokens=100) == expected


def test_exported_model_scores_like_torch(gpt, gpt_path, tokenizer, text):
    backend = open_backend(gpt_path)
    ids = backend.tokenizer.encode(text[:2000])
    assert backend.block_size == BLOCK_SIZE
    onnx_loss, tokens = exact_loss(backend.logits, ids, backend.block_size)

    def torch_logits(batch):
        with torch.no_grad():
            return gpt(torch.from_numpy(batch))[0].numpy()

    torch_loss, _ = exact_loss(torch_logits, tokenizer.encode(text[:2000]), BLOCK_SIZE)
    assert tokens == 1999
    assert abs(onnx_loss - torch_loss) < 1e-5


@pytest.mark.parametrize("sampler_options", [
    ["--sampler", "greedy", "--max-new-tokens", "600"],
    ["--seed", "5", "--max-new-tokens", "200", "--num-samples", "2"],  # multinomial
    ["--sampler", "top_p:p=0.9", "--seed", "6", "--max-new-tokens", "200", "--num-samples", "2"],
    # Samplers that look at the text so far, and a logit bias.
    ["--sampler", "repetition_penalty:penalty=1.5,window=20", "--sampler", "top_k:k=10", "--seed", "7",
     "--max-new-tokens", "200", "--num-samples", "2"],
    ["--sampler", "penalties:presence=0.8,frequency=0.4", "--seed", "8", "--max-new-tokens", "200"],
    ["--sampler", "no_repeat_ngram:n=3", "--sampler", "greedy", "--max-new-tokens", "150"],
    ["--logit-bias", "e=ban", "--logit-bias", " =1.5", "--seed", "9", "--max-new-tokens", "200"],
    ["--sampler", "mirostat:tau=3.0", "--seed", "10", "--max-new-tokens", "200", "--num-samples", "2"],
    ["--sampler", "temperature:t=2", "--seed", "12", "--max-new-tokens", "60", "--show-probs"],
])
def test_gen_sample_and_gen_run_write_the_same_text(checkpoint_dir, gpt_path, sampler_options):
    common = ["--prompt", "ROMEO:", *sampler_options]
    sampled = CliRunner().invoke(cli_group(), ["sample", "--checkpoint", str(checkpoint_dir), *common])
    ran = CliRunner().invoke(cli_group(), ["run", str(gpt_path), *common])
    assert sampled.exit_code == 0 and ran.exit_code == 0, (sampled.output, ran.output)
    assert ran.output == sampled.output
    assert len(ran.output) > 100


def invoke(*arguments, **kwargs):
    return CliRunner().invoke(cli_group(), [str(argument) for argument in arguments], **kwargs)


def test_json_prints_one_object_per_token_with_its_probabilities(gpt_path):
    plain = invoke("run", gpt_path, "--prompt", "ROMEO:", "--seed", 4, "--max-new-tokens", 40, "--sampler", "top_k:k=4")
    result = invoke("run", gpt_path, "--prompt", "ROMEO:", "--seed", 4, "--max-new-tokens", 40, "--sampler", "top_k:k=4",
                    "--json", "--logprobs", 5)
    assert result.exit_code == 0, result.output
    *tokens, closing = [json.loads(line) for line in result.stdout.splitlines()]  # closing: finish_reason, usage
    assert len(tokens) == 40 and closing["finish_reason"] == "length"
    assert "ROMEO:" + "".join(token["text"] for token in tokens) + "\n" + SAMPLE_SEPARATOR + "\n" == plain.stdout
    for token in tokens:
        top = token["top"]
        assert len(top) == 5 and [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert top[0]["logprob"] >= token["logprob"] and token["logprob"] <= 0
        assert token["token"] in [t["token"] for t in top[:4]]  # top_k:k=4 draws among the 4 most likely
        # After top_k the kept mass is renormalised, so each kept token is likelier than under the model.
        assert token["sampled_logprob"] >= token["logprob"]
        assert top[4]["sampled_logprob"] == -math.inf  # the fifth most likely was removed
    greedy = invoke("run", gpt_path, "--sampler", "greedy", "--max-new-tokens", 10, "--json")
    assert all(json.loads(line)["sampled_logprob"] == 0.0 and json.loads(line)["top"] == []
               for line in greedy.stdout.splitlines()[:-1])


def test_show_probs_colours_tokens_on_a_terminal_and_prints_plain_text_elsewhere(gpt_path):
    arguments = ["run", gpt_path, "--prompt", "ROMEO:", "--seed", 2, "--max-new-tokens", 60]
    plain = invoke(*arguments)
    uncoloured = invoke(*arguments, "--show-probs")
    coloured = invoke(*arguments, "--show-probs", color=True)
    assert uncoloured.stdout == plain.stdout  # not a terminal: no escape codes
    assert "\x1b[" in coloured.stdout and click.unstyle(coloured.stdout) == plain.stdout
    assert "token probability under the model" in coloured.stderr


def test_temperature_cools_and_warms_the_colours(generator):
    def mean_probability(t):
        tokens = list(generator.tokens("ROMEO:", sampler=f"temperature:t={t}", seed=1, max_new_tokens=300, logprobs=0))
        return np.mean([math.exp(token.logprob) for token in tokens])

    assert mean_probability(2.0) < mean_probability(1.0) < mean_probability(0.5)


def test_the_token_stream_matches_torch(gpt, tokenizer, generator):
    backend = TorchBackend(gpt)
    chain = build_sampler_chain(["repetition_penalty:penalty=1.3", "top_k:k=8"])
    expected = [step.tokens[0] for step in generate_text(backend, tokenizer, ["ROMEO:"], chain, np.random.default_rng(3),
                                                         80, logprobs=3) if step.tokens]
    got = list(generator.tokens("ROMEO:", sampler=["repetition_penalty:penalty=1.3", "top_k:k=8"], seed=3,
                                max_new_tokens=80, logprobs=3))
    assert [token.id for token in got] == [token.id for token in expected]
    for mine, theirs in zip(got, expected):
        assert abs(mine.logprob - theirs.logprob) < 1e-4 and abs(mine.sampled_logprob - theirs.sampled_logprob) < 1e-4
        assert [a.id for a in mine.top] == [a.id for a in theirs.top]


class StatefulPlugin:
    """A sampler whose picks depend on how often it was called: leaks show at once."""

    class CountingSampler:
        def __init__(self):
            self.calls = 0

        def __call__(self, logits, rng):
            self.calls += 1
            return np.full(len(logits), self.calls % logits.shape[1], dtype=np.int64)

    @hookimpl
    def register_samplers(self, register):
        register("counting", self.CountingSampler)


def test_every_sample_and_every_call_gets_a_fresh_sampler(fresh_plugins, gpt_path, generator):
    get_plugins().register(StatefulPlugin(), "gen-stateful")
    result = invoke("run", gpt_path, "--sampler", "counting", "--max-new-tokens", 20, "--num-samples", 3)
    assert result.exit_code == 0, result.output
    samples = result.stdout.split(SAMPLE_SEPARATOR + "\n")
    assert samples[0] == samples[1] == samples[2] and samples[3] == ""
    assert generator.generate(["a"], sampler="counting", max_new_tokens=5) == \
        generator.generate(["a"], sampler="counting", max_new_tokens=5)


class BrokenSamplerPlugin:
    class Broken:
        def __call__(self, logits, rng):
            return logits.argmax(axis=-1).astype(np.float32) + 0.7

    @hookimpl
    def register_samplers(self, register):
        register("broken", self.Broken)


def test_a_broken_sampler_is_one_line_naming_it_and_its_distribution(fresh_plugins, gpt_path, generator):
    get_plugins().register(BrokenSamplerPlugin(), "gen-broken-sampler")
    result = invoke("run", gpt_path, "--sampler", "broken", "--max-new-tokens", 5)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.splitlines()[-1] == (
        "Error: sampler 'broken' (from gen-broken-sampler) returned float32 values, not integer token ids")
    with pytest.raises(GenError, match="sampler 'broken' .from gen-broken-sampler. returned float32"):
        generator.generate(["a"], sampler="broken", max_new_tokens=5)


@pytest.mark.parametrize("bias, message", [
    ("ROMEO=1", "'ROMEO' is 5 tokens for this model's tokenizer; it must be exactly one"),
    ("e=lots", "'lots' is not a number, -inf or ban"),
    ("e=inf", "the bias must be a number, -inf or ban"),
    ("=1", "is not TEXT=BIAS"),
    ("日=1", "cannot encode '日'"),
])
def test_bad_logit_bias_is_a_one_line_error(gpt_path, bias, message):
    result = invoke("run", gpt_path, "--logit-bias", bias, "--max-new-tokens", 5)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert message in result.output.splitlines()[-1]


def test_logit_bias_in_the_python_api_bans_and_favours_tokens(generator, tokenizer):
    [e] = tokenizer.encode("e")
    text = generator.generate(["ROMEO:"], seed=1, max_new_tokens=300, logit_bias={e: -math.inf})[0]
    assert "e" not in text and len(text) == 300
    [z] = tokenizer.encode("z")
    favoured = generator.generate(["ROMEO:"], seed=1, max_new_tokens=100, logit_bias={z: 30.0})[0]
    assert favoured.count("z") > 90
    # A Sampling object takes a logit bias given beside it too.
    text = generator.generate(["ROMEO:"], sampler=Sampling(["temperature:t=1.5"]), seed=1, max_new_tokens=300,
                              logit_bias={e: -math.inf})[0]
    assert "e" not in text and len(text) == 300


# --- the OnnxModel API ----------------------------------------------------------------------


def test_a_batch_of_prompts_of_different_lengths_equals_each_prompt_alone(generator):
    prompts = ["a", "KING RICHARD III:\nNow is the winter", "\n\n", "What, ho!"]
    together = generator.generate(prompts, sampler="greedy", max_new_tokens=80)
    alone = [generator.generate([prompt], sampler="greedy", max_new_tokens=80)[0] for prompt in prompts]
    assert together == alone
    assert len(set(together)) > 1


def test_a_prompt_longer_than_block_size_keeps_its_last_block_size_tokens(generator):
    tail = "the last sixteen"
    assert len(tail) == BLOCK_SIZE
    long = generator.generate(["x" * 50 + tail], sampler="greedy", max_new_tokens=40)
    assert long == generator.generate([tail], sampler="greedy", max_new_tokens=40)


def test_stream_yields_the_text_generate_returns(generator):
    pieces = list(generator.stream("ROMEO:", sampler="top_p:p=0.8", seed=5, max_new_tokens=120))
    assert len(pieces) > 1
    assert "".join(pieces) == generator.generate(["ROMEO:"], sampler="top_p:p=0.8", seed=5, max_new_tokens=120)[0]


def test_stop_strings_end_the_text_before_them(generator):
    full = generator.generate(["ROMEO:"], sampler="greedy", max_new_tokens=200)[0]
    stop = full[30:32]
    first = full.find(stop)
    stopped = "".join(generator.stream("ROMEO:", sampler="greedy", max_new_tokens=200, stop=[stop]))
    assert stopped == full[:first]


def test_one_rng_shared_by_several_calls_continues_one_stream(generator):
    rng = np.random.default_rng(11)
    first = "".join(generator.stream("\n", max_new_tokens=50, rng=rng))
    second = "".join(generator.stream("\n", max_new_tokens=50, rng=rng))
    assert first != second
    rng = np.random.default_rng(11)
    assert "".join(generator.stream("\n", max_new_tokens=50, rng=rng)) == first


def test_wrong_arguments_are_clear_errors(generator):
    with pytest.raises(GenError, match="takes a list of prompts"):
        generator.generate("one prompt")
    with pytest.raises(GenError, match="max_new_tokens must be a whole number"):
        generator.generate(["a"], max_new_tokens=-1)
    with pytest.raises(GenError, match="the prompt is empty"):
        generator.generate([""])
    with pytest.raises(GenError, match="unknown sampler 'nucleus'"):
        generator.generate(["a"], sampler="nucleus")
    with pytest.raises(GenError, match="not in the tokenizer's vocabulary"):
        generator.generate(["日本"])


# --- bad files and providers -----------------------------------------------------------------


def rewrite_metadata(source: Path, target: Path, **changes) -> Path:
    """A copy of an export with metadata entries changed (None removes one)."""
    proto = onnx.load(str(source))
    values = {entry.key: entry.value for entry in proto.metadata_props}
    for key, value in changes.items():
        key = key.replace("_", ".")
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    del proto.metadata_props[:]
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(target))
    return target


def bad_files(gpt_path: Path, folder: Path) -> dict:
    random_bytes = folder / "random.onnx"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(5000))
    truncated = folder / "truncated.onnx"
    truncated.write_bytes(gpt_path.read_bytes()[: gpt_path.stat().st_size // 2])
    return {
        "random bytes": (random_bytes, "is not an ONNX model"),
        "text file": (_write(folder / "notes.onnx", "hello, I am not a model\n"), "is not an ONNX model"),
        "empty file": (_write(folder / "empty.onnx", ""), "is empty"),
        "truncated": (truncated, r"is truncated \(\d+ bytes, the ONNX data ends early\)"),
        "no gen metadata": (
            rewrite_metadata(gpt_path, folder / "plain.onnx", gen_format=None, gen_model=None, gen_tokenizer=None),
            "is an ONNX model but not a gen export",
        ),
        "newer format": (
            rewrite_metadata(gpt_path, folder / "newer.onnx", gen_format=str(FORMAT_VERSION + 1)),
            f"has gen format version {FORMAT_VERSION + 1}, newer than this gen reads",
        ),
        "missing file": (folder / "nothing.onnx", "does not exist"),
    }


def _write(path: Path, content: str) -> Path:
    path.write_text(content)
    return path


@pytest.fixture(scope="module")
def bad(gpt_path, tmp_path_factory):
    return bad_files(gpt_path, tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize(
    "kind", ["random bytes", "text file", "empty file", "truncated", "no gen metadata", "newer format", "missing file"]
)
def test_a_bad_file_is_a_one_line_error_saying_what_is_wrong(bad, kind):
    path, message = bad[kind]
    with pytest.raises(GenError, match=message) as error:
        OnnxModel(path)
    assert "\n" not in str(error.value)
    result = CliRunner().invoke(cli_group(), ["run", str(path)])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith("Error: ")


def test_an_unavailable_provider_names_the_available_ones(gpt_path):
    with pytest.raises(GenError, match="execution provider 'NoSuchExecutionProvider' is not available") as error:
        OnnxModel(gpt_path, provider="NoSuchExecutionProvider")
    for name in onnxruntime.get_available_providers():
        assert name in str(error.value)


def test_providers_are_named_in_full_or_short(gpt_path):
    assert OnnxModel(gpt_path, provider="cpu").session.get_providers() == ["CPUExecutionProvider"]
    assert OnnxModel(gpt_path, provider="CPUExecutionProvider").session.get_providers() == ["CPUExecutionProvider"]


# --- `gen run` -------------------------------------------------------------------------------


def cli_group() -> click.Group:
    """A gen-style group (GenError -> one line) with the commands under test."""
    return GenGroup(commands=[run, export, sample])


def test_gen_run_streams_samples_separated_by_dashes_with_one_rng(generator, gpt_path):
    result = CliRunner().invoke(
        cli_group(), ["run", str(gpt_path), "--prompt", "ROMEO:", "--num-samples", "2", "--seed", "3",
                      "--max-new-tokens", "40", "--sampler", "top_k:k=10"],
    )
    assert result.exit_code == 0, result.output
    rng = np.random.default_rng(3)
    first, second = (generator.generate(["ROMEO:"], sampler="top_k:k=10", max_new_tokens=40, rng=rng)[0] for _ in range(2))
    assert result.output == f"ROMEO:{first}\n{SAMPLE_SEPARATOR}\nROMEO:{second}\n{SAMPLE_SEPARATOR}\n"


def test_gen_run_stop_and_defaults(gpt_path, generator):
    result = CliRunner().invoke(cli_group(), ["run", str(gpt_path), "--sampler", "greedy", "--max-new-tokens", "30"])
    assert result.exit_code == 0, result.output
    expected = generator.generate(["\n"], sampler="greedy", max_new_tokens=30)[0]
    assert result.output == f"\n{expected}\n{SAMPLE_SEPARATOR}\n"  # the default prompt is a newline
    stop = expected[5:7]
    stopped = CliRunner().invoke(cli_group(), ["run", str(gpt_path), "--sampler", "greedy", "--max-new-tokens", "30",
                                               "--stop", stop])
    assert stopped.output == f"\n{expected[:expected.find(stop)]}\n{SAMPLE_SEPARATOR}\n"


def test_gen_run_threads_change_speed_not_text(gpt_path):
    common = ["run", str(gpt_path), "--sampler", "top_p:p=0.9", "--max-new-tokens", "40", "--seed", "5"]
    one = CliRunner().invoke(cli_group(), [*common, "--threads", "1"])
    two = CliRunner().invoke(cli_group(), [*common, "--threads", "2"])
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
    assert one.output == two.output


def test_gen_run_reports_a_bad_sampler_option_in_one_line(gpt_path):
    result = CliRunner().invoke(cli_group(), ["run", str(gpt_path), "--sampler", "top_k:kk=2"])
    assert result.exit_code == 1
    assert result.output == "Error: unknown option 'kk' for sampler 'top_k'; accepted options: k (int=40)\n"


def test_gen_run_refuses_a_prompt_it_cannot_encode_before_printing_anything(gpt_path):
    result = CliRunner().invoke(cli_group(), ["run", str(gpt_path), "--prompt", "ROMEO 日本"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot encode the prompt: character '日' at position 6")
    assert result.output.count("\n") == 1


# --- the torch line --------------------------------------------------------------------------


TORCH_FREE_SCRIPT = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import click
from click.testing import CliRunner
import gen.runtime
from gen.runtime import OnnxModel
from gen.core.cli.backends import open_backend
from gen.core.cli.runtime_commands import run
from gen.core import hookimpl
from gen.core.training.checkpoint import save_checkpoint
from gen.core.registry import get_plugins
from gen.core.cli import GenGroup
from gen.core.cli.commands import sample

generator = OnnxModel(sys.argv[1])
text = generator.generate(["ROMEO:"], sampler="greedy", max_new_tokens=100)[0]
backend = open_backend(sys.argv[1])
assert backend.logits(__import__("numpy").zeros((2, backend.block_size), dtype="int64")).shape[:2] == (2, backend.block_size)
result = CliRunner().invoke(GenGroup(commands=[run]), ["run", sys.argv[1], "--sampler", "greedy",
                                                       "--max-new-tokens", "100", "--prompt", "ROMEO:"])
assert result.exit_code == 0, result.output
assert result.output.startswith("ROMEO:" + text), (result.output, text)
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "onnx", "onnxscript") and sys.modules[name] is not None)
assert not loaded, loaded
print(text, end="")
"""


def test_the_runtime_runs_with_torch_blocked(gpt_path, generator):
    completed = subprocess.run(
        [sys.executable, "-c", TORCH_FREE_SCRIPT, str(gpt_path)],
        capture_output=True, text=True, timeout=120, cwd=REPOSITORY,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == generator.generate(["ROMEO:"], sampler="greedy", max_new_tokens=100)[0]


def test_importing_the_cli_commands_stays_light():
    script = (
        "import sys; import gen.core.cli.runtime_commands, gen.core.cli.export_commands, gen.runtime, gen.export; "
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'onnxscript') if m in sys.modules]; "
        "print(heavy)"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPOSITORY)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"
