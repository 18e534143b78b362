"""`gen export --gguf FILE`: a gen gpt as llama.cpp's gpt2 GGUF, read back with the gguf package.

Tiny models trained for a few steps on the in-repo excerpt (char, byte and bpe
tokenizers, with and without biases) go out through the real CLI; gguf.GGUFReader
reads every tensor back equal to the checkpoint's (f32 exactly, f16 as float16
rounds it, q8_0 and q4_0 within their block quantization), the metadata llama.cpp
builds the graph from, and a vocabulary whose byte-level token strings decode to
the bytes of the text gen's tokenizer encoded.
"""
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from gen.core.training.checkpoint import load_checkpoint  # noqa: E402
from gen.core.training.hf import byte_to_unicode  # noqa: E402
from gen.export.gguf import gguf_tensor_names  # noqa: E402
from cli_helpers import gen  # noqa: E402

SHAKESPEARE = Path(__file__).resolve().parent / "data" / "tinyshakespeare-excerpt.txt"
pytestmark = pytest.mark.usefixtures("module_cache", "one_torch_thread")


def train(folder: Path, tokenizer: str, *extra) -> Path:
    corpus = folder / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000] + "é€", encoding="utf-8")
    run = folder / "run"
    trained = gen("train", "--data", corpus, "--out", run, "--tokenizer", tokenizer, "--max-iters", 2,
                  "--eval-interval", 2, "--n-layer", 2, "--n-embd", 64, "--n-head", 2, "--block-size", 32,
                  "--batch-size", 2, *extra)
    assert trained.exit_code == 0, trained.output
    return run


def field(reader, key: str):
    return reader.fields[key].contents()


@pytest.fixture(scope="module")
def char_run(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("char"), "char", "--bias")


@pytest.mark.parametrize("gguf_type", ["f32", "f16", "q8_0", "q4_0"])
def test_every_tensor_and_the_metadata_read_back(char_run, tmp_path, gguf_type):
    path = tmp_path / f"model-{gguf_type}.gguf"
    exported = gen("export", "--gguf", path, "--gguf-type", gguf_type, "--checkpoint", char_run)
    assert exported.exit_code == 0, exported.output
    assert "tanh approximation" in exported.output  # gpt's default exact GELU: llama.cpp approximates it
    loaded = load_checkpoint(char_run)
    config = loaded.model.config
    reader = gguf.GGUFReader(path)

    assert field(reader, "general.architecture") == "gpt2"
    assert field(reader, "gpt2.context_length") == config.block_size
    assert field(reader, "gpt2.embedding_length") == config.n_embd
    assert field(reader, "gpt2.feed_forward_length") == 4 * config.n_embd
    assert field(reader, "gpt2.block_count") == config.n_layer
    assert field(reader, "gpt2.attention.head_count") == config.n_head
    assert field(reader, "gpt2.attention.layer_norm_epsilon") == pytest.approx(1e-5)

    state = loaded.model.state_dict()
    names = gguf_tensor_names(config.n_layer)
    read = {tensor.name: tensor for tensor in reader.tensors}
    assert set(read) == set(names.values())  # the head is tied: no output.weight
    for key, name in names.items():
        expected = state[key].float().numpy()
        tensor = read[name]
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(expected.shape)
        if expected.ndim == 1 or name == "position_embd.weight" or gguf_type == "f32":
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32, name
            np.testing.assert_array_equal(values, expected, err_msg=name)
        elif gguf_type == "f16":
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F16, name
            np.testing.assert_array_equal(values, expected.astype(np.float16).astype(np.float32), err_msg=name)
        else:  # blocks of 32 with one float16 scale: off by half a step of the block's largest value
            # (q4_0: a whole one at the end of its range, which is -8..7), and by the scale's rounding
            largest = np.abs(expected).reshape(-1, 32).max(axis=1, keepdims=True)
            bound = largest * ({"q8_0": 0.5 / 127, "q4_0": 1 / 8}[gguf_type] + 1 / 1000)
            assert (np.abs(values - expected).reshape(-1, 32) <= bound).all(), name
            assert tensor.tensor_type == getattr(gguf.GGMLQuantizationType, gguf_type.upper()), name


def decode_byte_level(token: str) -> bytes:
    from_unicode = {character: byte for byte, character in byte_to_unicode().items()}
    return bytes(from_unicode[character] for character in token)


@pytest.mark.parametrize("tokenizer", ["char", "byte", "bpe:vocab_size=300"])
def test_the_vocabulary_is_gpt2_byte_level_and_decodes_as_gen(tmp_path, tokenizer):
    run = train(tmp_path, tokenizer)
    path = tmp_path / "model.gguf"
    exported = gen("export", "--gguf", path, "--checkpoint", run)
    assert exported.exit_code == 0, exported.output
    loaded = load_checkpoint(run)
    reader = gguf.GGUFReader(path)
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = field(reader, "tokenizer.ggml.merges")
    assert len(tokens) == loaded.model.config.vocab_size == reader.tensors[0].shape[-1]
    sample = SHAKESPEARE.read_text(encoding="utf-8")[:2_000] + "é€"
    ids = loaded.tokenizer.encode(sample)
    assert b"".join(decode_byte_level(tokens[i]) for i in ids) == sample.encode("utf-8")
    assert all(token_type == gguf.TokenType.NORMAL for token_type in field(reader, "tokenizer.ggml.token_type"))
    if tokenizer.startswith("bpe"):  # each merge joins two tokens into the next one, in rank order
        assert len(merges) == loaded.tokenizer.vocab_size - 256
        assert all(first + second == tokens[256 + rank] for rank, (first, second)
                   in enumerate(merge.split(" ") for merge in merges))
    elif tokenizer == "char":  # é and € are several bytes: merged from them, left to right
        assert {"Ã ©", "âĤ ¬"} <= set(merges)
    else:
        assert merges == ["[gen-no-merges] [gen-no-merges]"]


def test_gpt2s_tanh_gelu_is_what_llamacpp_computes(tmp_path):
    run = train(tmp_path, "char", "--model", "gpt:activation=gelu_tanh")
    exported = gen("export", "--gguf", tmp_path / "model.gguf", "--checkpoint", run)
    assert exported.exit_code == 0 and "wrote" in exported.output and "note" not in exported.output, exported.output


def test_what_gguf_cannot_hold_is_refused_in_one_line(char_run, tmp_path):
    bigram = gen("train", "--data", SHAKESPEARE, "--out", tmp_path / "bigram", "--model", "bigram",
                 "--max-iters", 1, "--eval-interval", 1, "--block-size", 8, "--batch-size", 2)
    assert bigram.exit_code == 0, bigram.output
    refused = gen("export", "--gguf", tmp_path / "b.gguf", "--checkpoint", tmp_path / "bigram")
    assert refused.exit_code != 0 and "writes gen's gpt model" in refused.output
    assert len(refused.output.strip().splitlines()) == 1

    path = tmp_path / "model.gguf"
    assert gen("export", "--gguf", path, "--checkpoint", char_run).exit_code == 0
    again = gen("export", "--gguf", path, "--checkpoint", char_run)
    assert again.exit_code != 0 and "--overwrite" in again.output
    assert gen("export", "--gguf", path, "--checkpoint", char_run, "--overwrite").exit_code == 0
    mixed = gen("export", "--gguf", path, "--checkpoint", char_run, "--quantize", "int8")
    assert mixed.exit_code != 0 and "--quantize" in mixed.output
    lone_type = gen("export", tmp_path / "m.onnx", "--checkpoint", char_run, "--gguf-type", "f16")
    assert lone_type.exit_code != 0 and "--gguf FILE" in lone_type.output
