"""`gen import nanogpt`: checkpoints written here in nanoGPT's own format (its model
code, its state-dict names, the `model_args`, `config` and the rest of what its
train.py saves, and the meta.pkl of its shakespeare_char data) become gen checkpoints
whose logits equal nanoGPT's within 1e-5, and that gen sample, eval, export and run
use. A pickle payload in either file is refused and never runs. nanoGPT's model
code is re-typed in benchmarks/nanogpt_model.py (MIT, Andrej Karpathy)."""
import json
import math
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from nanogpt_model import GPT, GPTConfig  # benchmarks/nanogpt_model.py: nanoGPT's model.py (MIT)

from gen.core.training.checkpoint import load_checkpoint
from gen.core.errors import GenError
from gen.core.reading import load_plain_pickle
from cli_helpers import gen

SHAKESPEARE = Path(__file__).resolve().parent / "data" / "tinyshakespeare-excerpt.txt"
pytestmark = pytest.mark.usefixtures("module_cache", "one_torch_thread")


# --- nanoGPT's files, as its prepare.py and train.py write them -----------------------


def write_meta(path: Path, text: str) -> None:
    """data/shakespeare_char/prepare.py: the sorted characters, stoi and itos."""
    chars = sorted(list(set(text)))
    meta = {"vocab_size": len(chars), "itos": {i: ch for i, ch in enumerate(chars)},
            "stoi": {ch: i for i, ch in enumerate(chars)}}
    with open(path, "wb") as f:
        pickle.dump(meta, f)


def write_checkpoint(path: Path, model: GPT, compiled: bool, mask_buffers: bool) -> None:
    """train.py's checkpoint dict; with compile=True its state dict keys carry _orig_mod.

    Under torch < 2.0 nanoGPT's attention keeps its causal mask in a buffer, saved as
    attn.bias: `mask_buffers` adds those entries as that torch would have saved them.
    """
    config = model.config
    model_args = dict(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                      block_size=config.block_size, bias=config.bias, vocab_size=config.vocab_size,
                      dropout=config.dropout)
    state = model.state_dict()
    if mask_buffers:
        mask = torch.tril(torch.ones(config.block_size, config.block_size)).view(1, 1, config.block_size, -1)
        state.update({f"transformer.h.{i}.attn.bias": mask for i in range(config.n_layer)})
    if compiled:
        state = {"_orig_mod." + key: value for key, value in state.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_config = {"out_dir": "out-shakespeare-char", "dataset": "shakespeare_char", "batch_size": 12,
                    "block_size": config.block_size, "compile": compiled, "learning_rate": 1e-3}
    torch.save({"model": state, "optimizer": optimizer.state_dict(), "model_args": model_args,
                "iter_num": 250, "best_val_loss": torch.tensor(2.125), "config": train_config}, path)


def nanogpt_model(vocab_size: int, bias: bool, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=32, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32,
                          dropout=0.2, bias=bias))
    with torch.no_grad():  # random weights, biases and LayerNorm gains too, so that each one matters
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3 if parameter.dim() >= 2 else 0.1)
            if parameter.dim() == 1:
                parameter.add_(1.0)
    return model.eval()


@pytest.fixture(scope="module")
def text() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def nanogpt_files(tmp_path_factory, text):
    """Two nanoGPT runs on the excerpt's characters: with biases and torch.compile's key
    prefix, and without biases and with the mask buffers of old torch's attention."""
    folder = tmp_path_factory.mktemp("nanogpt")
    write_meta(folder / "meta.pkl", text)
    vocab_size = len(set(text))
    models = {}
    for name, bias, compiled in (("bias", True, True), ("nobias", False, False)):
        models[name] = nanogpt_model(vocab_size, bias)
        write_checkpoint(folder / f"{name}.pt", models[name], compiled, mask_buffers=not compiled)
    return folder, models


@pytest.mark.parametrize("variant", ["bias", "nobias"])
def test_imported_logits_equal_nanogpts(nanogpt_files, tmp_path, text, variant):
    folder, models = nanogpt_files
    result = gen("import", "nanogpt", folder / f"{variant}.pt", "--meta", folder / "meta.pkl", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "step 250" in result.output

    checkpoint = load_checkpoint(tmp_path / "out")
    assert checkpoint.model_config["bias"] is (variant == "bias")
    assert checkpoint.step == 250 and checkpoint.best_val_loss == pytest.approx(2.125)
    assert checkpoint.train_args["data"] is None  # no input.txt beside meta.pkl, and no name gen eval would download
    ids = torch.tensor([checkpoint.tokenizer.encode(text[i:i + 32]) for i in (0, 1000, 5000)])  # (3, 32)
    with torch.no_grad():
        reference, _ = models[variant](ids, targets=ids)  # with targets nanoGPT returns every position
        logits, _ = checkpoint.model(ids)
    assert logits.shape == reference.shape == (3, 32, len(set(text)))
    assert reference.std().item() > 1.0  # logits far apart: a wrong weight would show
    assert (logits - reference).abs().max().item() < 1e-5


def test_gen_sample_eval_export_and_run_work_on_an_import(nanogpt_files, tmp_path, text):
    folder, models = nanogpt_files
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    out = tmp_path / "imported"
    assert gen("import", "nanogpt", folder / "bias.pt", "--meta", folder / "meta.pkl", "--out", out,
               "--data", corpus).exit_code == 0

    arguments = ["--prompt", "ROMEO:", "--sampler", "greedy", "--max-new-tokens", "60"]
    sampled = gen("sample", "--checkpoint", out, *arguments)
    assert sampled.exit_code == 0, sampled.output
    # nanoGPT's own greedy continuation, token by token with its model code.
    tokenizer = load_checkpoint(out).tokenizer
    ids = torch.tensor([tokenizer.encode("ROMEO:")])
    with torch.no_grad():
        for _ in range(20):
            logits, _ = models["bias"](ids[:, -32:])
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert sampled.output.startswith(tokenizer.decode(ids[0].tolist()))

    evaluated = gen("eval", "--checkpoint", out, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["data"] == str(corpus) and math.isfinite(report["loss"])

    onnx_path = tmp_path / "imported.onnx"
    exported = gen("export", onnx_path, "--checkpoint", out)
    assert exported.exit_code == 0, exported.output
    ran = gen("run", onnx_path, *arguments)
    assert ran.exit_code == 0 and ran.output == sampled.output

    described = json.loads(gen("info", out, "--json").output)
    assert described["source"]["format"] == "nanogpt" and described["step"] == 250


class Payload:
    """What a malicious pickle holds: unpickling it would create `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_payload_in_meta_pkl_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "meta.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"vocab_size": 2, "itos": {0: "a", 1: "b"}, "hook": Payload(marker)}, f)
    with pytest.raises(GenError, match="refused to load .*posix.system"):
        load_plain_pickle(evil)
    assert not marker.exists()
    # The check has teeth: the ordinary unpickler would run the payload.
    with open(evil, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_a_pickle_payload_in_the_checkpoint_is_refused_and_never_runs(nanogpt_files, tmp_path):
    folder, models = nanogpt_files
    marker = tmp_path / "ran"
    checkpoint = torch.load(folder / "bias.pt", weights_only=True)
    checkpoint["config"]["hook"] = Payload(marker)
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    result = gen("import", "nanogpt", tmp_path / "ckpt.pt", "--meta", folder / "meta.pkl", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "refused to load" in result.output and "nothing in it was run" in result.output
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_meta_pkl_holds_only_plain_data(tmp_path):
    path = tmp_path / "meta.pkl"
    with open(path, "wb") as f:
        pickle.dump({"itos": {0, 1}}, f)  # a set: plain-looking, but not accepted
    with pytest.raises(GenError, match="holds a set"):
        load_plain_pickle(path)


@pytest.mark.parametrize("change, fragment", [
    (lambda c: c.pop("model_args"), "not a nanoGPT checkpoint"),
    (lambda c: c["model_args"].update(n_layer=3), "do not fit nanoGPT's GPT"),
    (lambda c: c["model_args"].update(vocab_size=10), "the tokenizer has 59 tokens but the model only 10"),
    (lambda c: c["model"]["_orig_mod.lm_head.weight"].add_(1.0), "lm_head and transformer.wte differ"),
])
def test_bad_checkpoints_are_one_line_errors(nanogpt_files, tmp_path, change, fragment):
    folder, _ = nanogpt_files
    checkpoint = torch.load(folder / "bias.pt", weights_only=True)
    if "lm_head" in fragment:
        checkpoint["model"]["_orig_mod.lm_head.weight"] = checkpoint["model"]["_orig_mod.lm_head.weight"].clone()
    change(checkpoint)
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    result = gen("import", "nanogpt", tmp_path / "ckpt.pt", "--meta", folder / "meta.pkl", "--out", tmp_path / "out")
    assert result.exit_code == 1 and fragment in result.output.splitlines()[-1], result.output


def test_the_output_is_not_overwritten_and_a_vocabulary_is_required(nanogpt_files, tmp_path):
    folder, _ = nanogpt_files
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = gen("import", "nanogpt", folder / "bias.pt", "--meta", folder / "meta.pkl", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "already exists" in result.output
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    result = gen("import", "nanogpt", folder / "bias.pt", "--out", tmp_path / "other")
    assert result.exit_code == 1 and "give --meta meta.pkl" in result.output


def test_import_records_the_input_txt_beside_meta_pkl_and_gen_eval_reads_it(nanogpt_files, tmp_path, text):
    folder, _ = nanogpt_files
    dataset = tmp_path / "shakespeare_char"  # nanoGPT's data/shakespeare_char/ after prepare.py
    dataset.mkdir()
    shutil.copy(folder / "meta.pkl", dataset / "meta.pkl")
    (dataset / "input.txt").write_text(text, encoding="utf-8")
    result = gen("import", "nanogpt", folder / "bias.pt", "--meta", dataset / "meta.pkl", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "out").train_args["data"] == str(dataset / "input.txt")
    scored = gen("eval", "--checkpoint", tmp_path / "out", "--json")  # no --data: the recorded file, offline
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output)["data"] == str(dataset / "input.txt")
