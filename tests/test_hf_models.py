"""GPT-2 folders in and out (`gen import hf`, `gen export --hf`), against transformers itself,
and fine-tuning what came in (`gen train --init-from`).

A tiny random GPT2LMHeadModel (GPT-2's own activation, gelu_new, and the exact gelu) and
a byte-level BPE tokenizer trained on the in-repo excerpt, saved with save_pretrained (no
hub download): imported, gen's logits equal transformers' and its greedy continuation
through ONNX, with `gen run` and `gen serve`, equals `generate`. A model gen trains goes
out as a folder that transformers loads with equal logits, and comes back equal. The
imported model fine-tunes (its loss falls, its tokenizer stays, a resume is bit for
bit). Hostile folders and shape-changing fine-tunes are refused in one line, and a
pickle payload never runs.
"""
import json
import os
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from gen.core.registry import get_plugins  # noqa: E402
from gen.core.training.checkpoint import load_checkpoint  # noqa: E402
from cli_helpers import StopAtStep, gen  # noqa: E402

SHAKESPEARE = Path(__file__).resolve().parent / "data" / "tinyshakespeare-excerpt.txt"
FINETUNE_RECIPE = Path(__file__).resolve().parents[1] / "examples" / "finetune.toml"
PROMPT = "ROMEO: But soft"
pytestmark = pytest.mark.usefixtures("module_cache", "one_torch_thread")


def gpt2_folder(folder: Path, text: str, **config) -> Path:
    """A tiny random GPT-2 and its byte-level BPE tokenizer, as save_pretrained writes them."""
    tokenizer = tokenizers.ByteLevelBPETokenizer()
    tokenizer.train_from_iterator([text], vocab_size=300, min_frequency=2, special_tokens=["<|endoftext|>"])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer._tokenizer,
                                                eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    torch.manual_seed(0)
    # GPT2Config's default activation, "gelu_new" (the tanh approximation), as a real GPT-2's.
    settings = dict(vocab_size=fast.vocab_size, n_positions=96, n_embd=32, n_layer=2, n_head=4,
                    bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**settings, **config})).eval()
    with torch.no_grad():  # larger weights than GPT-2's init, biases and norms away from 0 and 1:
        for parameter in model.parameters():  # varied greedy text, and a lost weight would show
            parameter.add_(torch.randn_like(parameter) * 0.15)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, text) -> Path:
    return gpt2_folder(tmp_path_factory.mktemp("gpt2") / "tiny", text)


@pytest.fixture(scope="module")
def imported(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "gpt2-imported"
    result = gen("import", "hf", folder, "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def exported(imported, tmp_path_factory) -> Path:
    onnx_path = tmp_path_factory.mktemp("exported") / "tiny.onnx"
    result = gen("export", onnx_path, "--checkpoint", imported)
    assert result.exit_code == 0, result.output
    return onnx_path


def hf_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(ids).logits


def hf_greedy_text(folder: Path, prompt: str, tokens: int) -> str:
    """transformers' own greedy continuation of `prompt`, `tokens` tokens long, as text."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        generated = model.generate(prompt_ids, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                                   pad_token_id=0, eos_token_id=None)
    new_ids = generated[0, prompt_ids.shape[1]:].tolist()
    assert len(new_ids) == tokens and len(set(new_ids)) > 1  # not one token repeated
    return tokenizer.decode(new_ids)


@pytest.mark.parametrize("activation, computed", [
    ("gelu_new", "gelu_tanh"),  # GPT-2's own (the fixture's folder)
    ("gelu_pytorch_tanh", "gelu_tanh"),  # the same approximation under transformers' other name
    ("gelu", "gelu"),  # the exact GELU
])
def test_an_imported_gpt2_computes_transformers_logits(folder, tmp_path, text, activation, computed):
    if activation != "gelu_new":
        folder = gpt2_folder(tmp_path / "tiny", text, activation_function=activation)
    assert json.loads((folder / "config.json").read_text()).get("activation_function", "gelu_new") == activation
    result = gen("import", "hf", folder, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    checkpoint = load_checkpoint(tmp_path / "out")
    assert checkpoint.model_config["block_size"] == 96 and checkpoint.model_config["bias"] is True
    assert checkpoint.model_config["activation"] == computed
    assert checkpoint.tokenizer_document["name"] == "hf"
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([checkpoint.tokenizer.encode(text[i:i + 400])[:48] for i in (0, 2000)])
    assert ids.tolist() == [reference_tokenizer(text[i:i + 400])["input_ids"][:48] for i in (0, 2000)]
    with torch.no_grad():
        logits, _ = checkpoint.model(ids)
    reference = hf_logits(folder, ids)
    assert reference.std().item() > 0.05
    assert (logits - reference).abs().max().item() < 1e-4
    # And out again: the folder gen writes names the activation it computes.
    assert gen("export", "--hf", tmp_path / "again", "--checkpoint", tmp_path / "out").exit_code == 0
    written = json.loads((tmp_path / "again" / "config.json").read_text())["activation_function"]
    assert written == {"gelu_tanh": "gelu_new", "gelu": "gelu"}[computed]
    assert (hf_logits(tmp_path / "again", ids) - reference).abs().max().item() < 1e-4


def test_greedy_text_through_onnx_equals_transformers_generate(folder, exported):
    ran = gen("run", exported, "--prompt", PROMPT, "--sampler", "greedy", "--max-new-tokens", 64)
    assert ran.exit_code == 0, ran.output
    assert ran.output.split("\n---")[0] == PROMPT + hf_greedy_text(folder, PROMPT, 64)


def test_gen_serve_serves_the_imported_model_to_the_openai_client(folder, exported):
    import openai
    from serve_helpers import running_server

    from gen.runtime.onnx_model import OnnxModel
    from gen.runtime.server import create_app

    with running_server(create_app(OnnxModel(exported), model_names=["tiny-gpt2"])) as url:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
            response = client.completions.create(model="tiny-gpt2", prompt=PROMPT, max_tokens=32, temperature=0)
    assert response.usage.completion_tokens == 32 and response.choices[0].finish_reason == "length"
    assert response.choices[0].text == hf_greedy_text(folder, PROMPT, 32)


@pytest.mark.parametrize("tokenizer", ["char", "byte", "bpe:vocab_size=300"])
def test_a_gen_model_goes_to_transformers_and_comes_back(tmp_path, text, tokenizer):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    run = tmp_path / "run"
    trained = gen("train", "--data", corpus, "--out", run, "--tokenizer", tokenizer, "--max-iters", 3,
                  "--eval-interval", 3, "--n-layer", 1, "--n-embd", 32, "--n-head", 2, "--block-size", 32,
                  "--batch-size", 2)
    assert trained.exit_code == 0, trained.output
    folder = tmp_path / "hf"
    exported = gen("export", "--hf", folder, "--checkpoint", run)
    assert exported.exit_code == 0, exported.output

    original = load_checkpoint(run)
    sample = text[100:160]
    ids = original.tokenizer.encode(sample)[:32]
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert hf_tokenizer(sample)["input_ids"][:32] == ids  # the tokenizer.json encodes as gen's does
    assert hf_tokenizer.decode(ids) == original.tokenizer.decode(ids)
    with torch.no_grad():
        expected, _ = original.model(torch.tensor([ids]))
    assert (hf_logits(folder, torch.tensor([ids])) - expected).abs().max().item() < 1e-4

    back = tmp_path / "back"
    assert gen("import", "hf", folder, "--out", back).exit_code == 0
    returned = load_checkpoint(back)
    assert returned.tokenizer.encode(sample) == original.tokenizer.encode(sample)
    with torch.no_grad():
        again, _ = returned.model(torch.tensor([ids]))
    assert torch.equal(again, expected) or (again - expected).abs().max().item() < 1e-6


# --- what is refused -------------------------------------------------------------------


class Payload:
    """What a malicious pickle holds: unpickling it would create `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def copy_folder(source: Path, target: Path, *, without=()) -> Path:
    target.mkdir()
    for file in source.iterdir():
        if file.name not in without:
            (target / file.name).write_bytes(file.read_bytes())
    return target


def test_a_pickle_payload_in_pytorch_model_bin_never_runs(folder, tmp_path):
    hostile = copy_folder(folder, tmp_path / "hostile", without=("model.safetensors",))
    marker = tmp_path / "ran"
    from safetensors.torch import load_file

    weights = load_file(folder / "model.safetensors")
    weights["hook"] = Payload(marker)
    torch.save(weights, hostile / "pytorch_model.bin")
    result = gen("import", "hf", hostile, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "refused to load" in result.output and "nothing in it was run" in result.output
    assert not marker.exists() and not (tmp_path / "out").exists()
    # A pytorch_model.bin of tensors alone imports.
    del weights["hook"]
    torch.save(weights, hostile / "pytorch_model.bin")
    assert gen("import", "hf", hostile, "--out", tmp_path / "out").exit_code == 0
    # The payload has teeth: the ordinary unpickler (torch.load without weights_only) runs it.
    torch.save({"hook": Payload(marker)}, tmp_path / "evil.bin")
    with open(tmp_path / "evil.bin", "rb") as handle:
        torch.load(handle, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("change, fragment", [
    ({"activation_function": "relu"}, "activation_function is 'relu'"),
    ({"activation_function": "quick_gelu"}, "activation_function is 'quick_gelu'"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon is 1e-06"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx is True"),
    ({"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn is True"),
    ({"n_inner": 64}, "n_inner is 64"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings is False"),
    ({"model_type": "llama"}, "model_type is 'llama'"),
    ({"n_embd": 64}, "the weights do not fit its config.json"),
    ({"n_layer": 3}, "the weights do not fit its config.json"),
])
def test_what_gpt_cannot_compute_exactly_is_one_line(folder, tmp_path, change, fragment):
    hostile = copy_folder(folder, tmp_path / "hostile")
    config = json.loads((folder / "config.json").read_text())
    (hostile / "config.json").write_text(json.dumps({**config, **change}))
    result = gen("import", "hf", hostile, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert fragment in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_a_tokenizer_larger_than_the_embedding_is_refused(folder, tmp_path):
    hostile = copy_folder(folder, tmp_path / "hostile")
    document = json.loads((folder / "tokenizer.json").read_text())
    document["model"]["vocab"]["zzzz-extra"] = 5000
    (hostile / "tokenizer.json").write_text(json.dumps(document))
    result = gen("import", "hf", hostile, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "the tokenizer has 5,001 tokens but the embedding only" in result.output


def test_vocab_json_and_merges_txt_make_the_same_tokenizer(folder, tmp_path, text):
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    slow = copy_folder(folder, tmp_path / "slow", without=("tokenizer.json",))
    tokenizer.backend_tokenizer.model.save(str(slow))  # vocab.json and merges.txt
    assert gen("import", "hf", slow, "--out", tmp_path / "out").exit_code == 0
    checkpoint = load_checkpoint(tmp_path / "out")
    assert checkpoint.tokenizer.encode(text[:2000]) == tokenizer(text[:2000])["input_ids"]


def test_export_hf_refuses_onnx_options_and_keeps_foreign_folders(folder, tmp_path):
    assert gen("import", "hf", folder, "--out", tmp_path / "out").exit_code == 0
    refused = gen("export", "--hf", tmp_path / "again", "--checkpoint", tmp_path / "out", "--quantize", "int8")
    assert refused.exit_code == 1 and "--quantize: for an ONNX export only" in refused.output
    both = gen("export", tmp_path / "x.onnx", "--hf", tmp_path / "again", "--checkpoint", tmp_path / "out")
    assert both.exit_code == 1 and "one of them" in both.output
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    kept = gen("export", "--hf", foreign, "--checkpoint", tmp_path / "out", "--overwrite")
    assert kept.exit_code == 1 and "notes.txt" in kept.output and (foreign / "notes.txt").exists()


# --- fine-tuning (gen train --init-from) -------------------------------------------------


@pytest.fixture(scope="module")
def new_text(tmp_path_factory, text) -> Path:
    """Text the tiny model has not been fitted to (its tokenizer was trained on the whole excerpt)."""
    corpus = tmp_path_factory.mktemp("new") / "new.txt"
    corpus.write_text(text[30000:], encoding="utf-8")
    return corpus


def fine_tune(imported, corpus, out, *options):
    """examples/finetune.toml's recipe, shrunk to a few small steps of the tiny model."""
    return gen("train", "--config", FINETUNE_RECIPE, "--init-from", imported, "--data", corpus, "--out", out,
               "--batch-size", 4, "--grad-accum", 2, "--block-size", 64, "--eval-iters", 4, *options)


def evaluations(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "val_loss" in line]


def test_fine_tuning_the_imported_model_lowers_its_loss_and_keeps_its_tokenizer(imported, new_text, tmp_path):
    run = tmp_path / "run"
    result = fine_tune(imported, new_text, run, "--max-iters", 8, "--eval-interval", 8, "--lr", 1e-3, "--min-lr", 1e-3)
    assert result.exit_code == 0, result.output
    first, last = evaluations(run)
    assert (first["step"], last["step"]) == (0, 8) and last["val_loss"] < first["val_loss"] - 0.1
    start, tuned = load_checkpoint(imported), load_checkpoint(run / "latest")
    assert tuned.tokenizer_document == start.tokenizer_document
    # The model's shape is the checkpoint's; only the block size is cropped, to --block-size.
    assert tuned.model_config == {**start.model_config, "block_size": 64}
    assert tuned.train_args["lr"] == 1e-3 and tuned.train_args["grad_accum"] == 2  # the recipe, overridden
    recorded = json.loads((run / "latest" / "config.json").read_text())["init_from"]
    assert recorded["path"] == str(imported.resolve()) and recorded["step"] == 0
    assert recorded["source"]["format"] == "hf"
    info = gen("info", run)
    assert f"fine-tuned  from {imported.resolve()} (step 0), imported from hf" in info.output, info.output


def test_a_fine_tune_starts_from_the_checkpoints_weights(imported, new_text, tmp_path):
    # At learning rate 0 the one step changes nothing: the weights are the imported ones, cropped.
    result = fine_tune(imported, new_text, tmp_path / "run", "--max-iters", 1, "--lr", 0, "--min-lr", 0)
    assert result.exit_code == 0, result.output
    start, tuned = load_checkpoint(imported).model.state_dict(), load_checkpoint(tmp_path / "run").model.state_dict()
    assert start.keys() == tuned.keys()
    for key, tensor in start.items():
        expected = tensor[:64] if key == "transformer.wpe.weight" else tensor
        assert torch.equal(tuned[key], expected), key



def test_resuming_a_fine_tune_is_bit_identical_to_running_it_straight(imported, new_text, tmp_path):
    options = ["--max-iters", 6, "--eval-interval", 2, "--lr", 1e-3, "--dropout", 0.1]  # dropout: RNG resumes too
    assert fine_tune(imported, new_text, tmp_path / "straight", *options).exit_code == 0
    stopper = StopAtStep(2)
    get_plugins().register(stopper, "stop-at-2")
    try:
        stopped = fine_tune(imported, new_text, tmp_path / "resumed", *options)
    finally:
        get_plugins().unregister(stopper)
    assert "stopped early at step 2" in stopped.output
    resumed = gen("train", "--out", tmp_path / "resumed", "--resume")
    assert resumed.exit_code == 0 and "resuming" in resumed.output, resumed.output
    straight, again = (load_checkpoint(tmp_path / name / "latest") for name in ("straight", "resumed"))
    assert again.step == 6 and again.model_config["dropout"] == 0.1
    for key, tensor in straight.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[key], tensor), key
    assert [m["val_loss"] for m in evaluations(tmp_path / "resumed")] == \
        [m["val_loss"] for m in evaluations(tmp_path / "straight")]
    # The resumed run still says where it started, and cannot start from elsewhere.
    assert json.loads((tmp_path / "resumed" / "latest" / "config.json").read_text())["init_from"]["step"] == 0
    moved = gen("train", "--out", tmp_path / "resumed", "--resume", "--init-from", tmp_path / "straight")
    assert moved.exit_code == 1 and "--init-from" in moved.output and "differs from the run being resumed" in moved.output


@pytest.mark.parametrize("option, fragment", [
    (["--n-layer", 3], "--n-layer 3: the model of --init-from"),
    (["--n-embd", 64], "has n_embd 32"),
    (["--block-size", 128], "has block_size 96 (the positions it has learned)"),
    (["--model", "gpt:activation=gelu"], "--model gpt:activation=gelu: the model of --init-from"),
    (["--no-bias"], "has bias True"),
    (["--model", "bigram"], "--model bigram: a fine-tune keeps the model and tokenizer of --init-from"),
    (["--tokenizer", "byte"], "--tokenizer byte: a fine-tune keeps the model and tokenizer"),
])
def test_a_fine_tune_refuses_to_change_the_models_shape(imported, new_text, tmp_path, option, fragment):
    result = fine_tune(imported, new_text, tmp_path / "run", "--max-iters", 1, *option)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert fragment in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "run").exists()


def test_a_character_outside_the_checkpoints_vocabulary_says_what_to_do(text, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    trained = gen("train", "--data", corpus, "--out", tmp_path / "char", "--max-iters", 1, "--n-layer", 1,
                  "--n-embd", 16, "--n-head", 2, "--block-size", 16, "--eval-iters", 1)
    assert trained.exit_code == 0, trained.output
    (tmp_path / "new.txt").write_text(text[:5000] + "café", encoding="utf-8")
    result = gen("train", "--init-from", tmp_path / "char", "--data", tmp_path / "new.txt", "--out", tmp_path / "run")
    error = result.output.strip().splitlines()[-1]  # (after the progress line of the encoding)
    assert result.exit_code == 1 and error.startswith("Error: ") and "Traceback" not in result.output, result.output
    assert "character 'é' at position 5003 is not in the tokenizer's vocabulary" in result.output
    assert "a fine-tune keeps the tokenizer of --init-from" in error and "remove or replace what it cannot" in error
    assert not (tmp_path / "run").exists()
