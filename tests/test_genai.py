"""`gen export --genai DIR`: the folder onnxruntime-genai loads. Its greedy search
gives the token ids of `gen run --sampler greedy` for 200 tokens, through newlines
(id 0, which a config without an end token of its own would end at), where the
onnxruntime-genai package is installed (`pip install 'gen[genai]'`, which `make
install` does where a wheel exists); the config, and that the extra end-of-sequence
logit changes nothing gen draws, are checked everywhere."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gen.core.training.checkpoint import save_checkpoint
from gen.core.tokenizer import tokenizer_to_dict
from gen.plugins.bigram import BigramLanguageModel
from gen.plugins.gpt import GPT
from gen.runtime.artifact import read_artifact
from gen.runtime.onnx_model import OnnxModel
from cli_helpers import gen

NEW_TOKENS = 200
PROMPT = "ROMEO:"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def genai_dir(tokenizer, tmp_path_factory) -> Path:
    """A GPT whose window holds the prompt and 200 new tokens, exported with --genai."""
    folder = tmp_path_factory.mktemp("genai")
    torch.manual_seed(0)
    model = GPT.from_config(dict(block_size=256, n_layer=2, n_head=2, n_embd=32, vocab_size=tokenizer.vocab_size))
    with torch.no_grad():  # wide weights: a peaked distribution, no near-ties for greedy
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                torch.nn.init.normal_(parameter, std=0.3)
        model.lm_head.weight[0] *= 2.5  # newlines (id 0, the pad id) among the greedy tokens
    save_checkpoint(folder / "checkpoint", model=model, model_name="gpt",
                    tokenizer_document=tokenizer_to_dict("char", tokenizer), train_args={}, step=0)
    result = gen("export", "--genai", folder / "genai", "--checkpoint", folder / "checkpoint", "--no-verify")
    assert result.exit_code == 0, result.output
    assert f"wrote {folder / 'genai'}/ for onnxruntime-genai" in result.output
    return folder / "genai"


def checkpoint_of(genai_dir: Path) -> Path:
    return genai_dir.parent / "checkpoint"


def test_the_folder_holds_the_export_and_a_config_that_describes_it(genai_dir):
    assert sorted(path.name for path in genai_dir.iterdir()) == ["genai_config.json", "model.onnx"]
    config = json.loads((genai_dir / "genai_config.json").read_text())
    model = read_artifact(genai_dir / "model.onnx").model
    decoder = config["model"]["decoder"]
    assert config["model"]["context_length"] == config["search"]["max_length"] == model["block_size"] == 256
    # One logit more than the tokenizer has tokens: the end-of-sequence id, never generated.
    vocab_size = model["config"]["vocab_size"]
    assert config["model"]["vocab_size"] == model["vocab_size"] == vocab_size + 1
    assert config["model"]["eos_token_id"] == vocab_size and config["model"]["pad_token_id"] < vocab_size
    assert (decoder["num_hidden_layers"], decoder["num_attention_heads"], decoder["head_size"]) == (2, 2, 16)
    assert decoder["filename"] == "model.onnx"
    assert decoder["inputs"]["past_key_names"] % 1 == "past_key_values.1.key"
    assert decoder["outputs"]["present_value_names"] % 0 == "present.0.value"


@pytest.mark.parametrize("sampler", ["greedy", "top_k:k=10"])
def test_the_end_logit_changes_nothing_gen_generates(genai_dir, sampler):
    arguments = ["--prompt", PROMPT, "--sampler", sampler, "--max-new-tokens", 120, "--seed", 3]
    ran = gen("run", genai_dir / "model.onnx", *arguments)
    sampled = gen("sample", "--checkpoint", checkpoint_of(genai_dir), *arguments)
    assert ran.exit_code == 0 and ran.output == sampled.output, ran.output + sampled.output
    logits = OnnxModel(genai_dir / "model.onnx").logits(np.array([[1, 2, 3]]))
    assert logits.shape[-1] == read_artifact(genai_dir / "model.onnx").model["vocab_size"]
    assert (logits[..., -1] == -1e30).all()


def test_onnxruntime_genai_greedy_ids_equal_gen_run(genai_dir):
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed (pip install 'gen[genai]')")
    generator = OnnxModel(genai_dir / "model.onnx")
    prompt = generator.tokenizer.encode(PROMPT)

    model = og.Model(str(genai_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + NEW_TOKENS, do_sample=False)
    search = og.Generator(model, params)
    search.append_tokens(np.array([prompt], dtype=np.int32))
    while not search.is_done():
        search.generate_next_token()
    genai_ids = [int(i) for i in search.get_sequence(0)][len(prompt):]

    gen_ids = [choice.id for choice in generator.tokens(PROMPT, sampler="greedy", max_new_tokens=NEW_TOKENS)]
    assert len(genai_ids) == len(gen_ids) == NEW_TOKENS
    assert genai_ids == gen_ids
    assert len(set(gen_ids)) > 5  # a varied text, not one token repeated
    assert 0 in gen_ids  # a newline: where it would have ended with the pad id as its end token
    ran = gen("run", genai_dir / "model.onnx", "--prompt", PROMPT, "--sampler", "greedy",
              "--max-new-tokens", NEW_TOKENS)
    assert ran.output.startswith(PROMPT + generator.tokenizer.decode(genai_ids))


def test_a_model_without_a_kv_cache_is_refused(tokenizer, tmp_path):
    model = BigramLanguageModel.from_config({"vocab_size": tokenizer.vocab_size, "block_size": 8})
    save_checkpoint(tmp_path / "checkpoint", model=model, model_name="bigram",
                    tokenizer_document=tokenizer_to_dict("char", tokenizer), train_args={}, step=0)
    result = gen("export", "--genai", tmp_path / "genai", "--checkpoint", tmp_path / "checkpoint", "--no-verify")
    assert result.exit_code == 1 and "onnxruntime-genai runs models with a KV cache" in result.output
    assert not (tmp_path / "genai").exists()


def test_export_needs_output_or_genai_not_both(tmp_path):
    for arguments in ([], [tmp_path / "model.onnx", "--genai", tmp_path / "genai"]):
        result = gen("export", *arguments, "--checkpoint", tmp_path)
        assert result.exit_code == 1 and "give OUTPUT.onnx, or --genai DIR" in result.output


def test_a_static_cache_or_a_folder_inside_a_checkpoint_is_refused_before_exporting(genai_dir, tmp_path):
    checkpoint = checkpoint_of(genai_dir)
    result = gen("export", "--genai", tmp_path / "genai", "--checkpoint", checkpoint, "--static-cache")
    assert result.exit_code == 1 and "--static-cache is for gen run" in result.output
    inside = checkpoint / "genai"
    result = gen("export", "--genai", inside, "--checkpoint", checkpoint, "--no-verify")
    assert result.exit_code == 1 and f"{str(inside / 'model.onnx')!r} is inside the checkpoint folder" in result.output
    assert not inside.exists() and not list(checkpoint.glob(".genai*"))


def readme_block(marker: str) -> str:
    """The README's fenced Python block that holds `marker`."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = readme.split("```python\n")[1:]
    return next(block.split("```")[0] for block in blocks if marker in block)


def test_the_readmes_onnxruntime_genai_snippet_runs_on_a_model_with_a_short_window(tokenizer, tmp_path, capsys):
    """As written, on the default model's 64-token window (the prompt and 200 tokens do not fit)."""
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed (pip install 'gen[genai]')")
    torch.manual_seed(0)
    model = GPT.from_config(dict(block_size=64, n_layer=1, n_head=2, n_embd=32, vocab_size=tokenizer.vocab_size))
    save_checkpoint(tmp_path / "checkpoint", model=model, model_name="gpt",
                    tokenizer_document=tokenizer_to_dict("char", tokenizer), train_args={}, step=0)
    result = gen("export", "--genai", tmp_path / "genai", "--checkpoint", tmp_path / "checkpoint", "--no-verify")
    assert result.exit_code == 0, result.output
    snippet = readme_block("import numpy as np, onnxruntime_genai as og").replace("DIR", str(tmp_path / "genai"))
    exec(compile(snippet, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith(PROMPT) and len(printed.rstrip("\n")) <= 64
