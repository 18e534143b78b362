"""The `hf` tokenizer: a Hugging Face tokenizer.json, built here with the tokenizers
package itself, round-trips text, streams, travels inside a checkpoint and an export,
and trains, samples and runs end to end."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from gen.core.cli import cli
from gen.core.data import train_tokenizer
from gen.core.errors import GenError
from gen.core.tokenizer import TextStream, tokenizer_from_dict
from gen.plugins.hf_tokenizers import HFTokenizer

SHAKESPEARE = Path(__file__).resolve().parent / "data" / "tinyshakespeare-excerpt.txt"
TEXTS = ["ROMEO: héllo 世界 👩‍👩‍👧", "  two  spaces\n\nand\ttabs ", "<|endoftext|>First Citizen:", ""]
pytestmark = pytest.mark.usefixtures("module_cache")


@pytest.fixture(scope="module")
def text() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")


def byte_level_bpe(text: str, vocab_size: int = 300) -> Tokenizer:
    """GPT-2's kind of tokenizer: byte-level BPE, lossless, with one special token."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([text], trainer)
    return tokenizer


def lowercase_sentencepiece(text: str) -> Tokenizer:
    """A lossy SentencePiece-style tokenizer: NFKC and lowercase, "▁" for spaces, <unk>."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator([text], trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"], show_progress=False))
    return tokenizer


@pytest.fixture(scope="module")
def byte_level_file(text, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    byte_level_bpe(text).save(str(path))
    return path


@pytest.fixture(scope="module")
def sentencepiece_file(text, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    lowercase_sentencepiece(text).save(str(path))
    return path


def test_round_trips_text_and_matches_the_tokenizers_package(byte_level_file, text):
    tokenizer = HFTokenizer.train(text, path=str(byte_level_file))
    reference = Tokenizer.from_file(str(byte_level_file))
    assert tokenizer.vocab_size == 300
    for sample in TEXTS + [text[:5000]]:
        ids = tokenizer.encode(sample)
        assert ids == reference.encode(sample, add_special_tokens=False).ids
        assert tokenizer.decode(ids) == sample
    assert len(tokenizer.encode(text[:5000])) < 5000 * 0.8  # merges were learned and are used
    assert tokenizer.encode("<|endoftext|>") == [0]  # the special token is one id, and decodes back


def test_travels_as_name_and_state_through_json(byte_level_file, text):
    tokenizer = HFTokenizer.train(text, path=str(byte_level_file))
    document = json.loads(json.dumps({"name": "hf", "state": tokenizer.to_dict()}))
    assert document["state"]["tokenizer"]["model"]["type"] == "BPE"
    rebuilt = tokenizer_from_dict(document)
    for sample in TEXTS:
        assert rebuilt.encode(sample) == tokenizer.encode(sample)
        assert rebuilt.decode(rebuilt.encode(sample)) == sample


def test_stream_gives_whole_characters_of_byte_tokens(byte_level_file, text):
    tokenizer = HFTokenizer.train(text, path=str(byte_level_file))
    sample = TEXTS[0]
    stream = TextStream(tokenizer)
    pieces = [stream.push(token) for token in tokenizer.encode(sample)] + [stream.flush()]
    assert "".join(pieces) == sample
    assert not any("\ufffd" in piece for piece in pieces)


def test_a_normalising_tokenizer_is_lossy_and_streams_like_a_whole_decode(sentencepiece_file, text):
    tokenizer = HFTokenizer.train(text, path=str(sentencepiece_file))
    ids = tokenizer.encode("ROMEO: the king 世")
    assert tokenizer.decode(ids) == "romeo: the king <unk>"  # lowercased; an unknown character is <unk>
    # Alone, the "▁the" token decodes without its space; the stream decodes each token
    # after the ones before it (the prompt's, for the first), so the spaces survive.
    prompt = tokenizer.encode("ROMEO:")
    assert ids[:len(prompt)] == prompt
    generated = ids[len(prompt):]
    assert tokenizer.decode(generated[:1]) == "the"
    stream = TextStream(tokenizer, context=prompt)
    pieces = [stream.push(token) for token in generated] + [stream.flush()]
    assert tokenizer.decode(prompt) + "".join(pieces) == tokenizer.decode(ids)


def test_an_edited_file_is_read_again_not_taken_from_a_cache(text, tmp_path):
    path = tmp_path / "tokenizer.json"
    byte_level_bpe(text, vocab_size=300).save(str(path))
    first, document = train_tokenizer(text, f"hf:path={path}")
    assert first.vocab_size == 300 and document["name"] == "hf"
    byte_level_bpe(text, vocab_size=320).save(str(path))
    second, _ = train_tokenizer(text, f"hf:path={path}")
    assert second.vocab_size == 320


@pytest.mark.parametrize("content, fragment", [
    (None, "does not exist"),
    ("not json", "is not JSON"),
    ('{"version": "1.0"}', "not a Hugging Face tokenizer.json"),
    ('{"model": {"type": "Nonsense"}}', "cannot read this tokenizer.json"),
])
def test_bad_files_are_one_line_errors(tmp_path, text, content, fragment):
    path = tmp_path / "tokenizer.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(GenError, match=fragment):
        train_tokenizer(text, f"hf:path={path}")


def test_a_malformed_state_and_out_of_range_ids(byte_level_file, text):
    with pytest.raises(GenError, match="malformed"):
        tokenizer_from_dict({"name": "hf", "state": {"merges": []}})
    tokenizer = HFTokenizer.train(text, path=str(byte_level_file))
    with pytest.raises(GenError, match="outside the tokenizer's vocabulary"):
        tokenizer.decode([300])


def test_without_the_tokenizers_package_the_error_says_what_to_install(byte_level_file, text):
    document = {"name": "hf", "state": HFTokenizer.train(text, path=str(byte_level_file)).to_dict()}
    script = (
        "import sys, json\n"
        "sys.modules['tokenizers'] = None\n"
        "from gen.core.tokenizer import tokenizer_from_dict\n"
        "from gen.core.errors import GenError\n"
        f"document = json.loads({json.dumps(json.dumps(document))})\n"
        "try:\n"
        "    tokenizer_from_dict(document)\n"
        "except GenError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pip install 'gen[hf]'" in result.stdout


def test_train_sample_export_and_run_with_a_tokenizer_json(byte_level_file, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(cli, [
        "train", "--data", str(corpus), "--out", str(out), "--tokenizer", f"hf:path={byte_level_file}",
        "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
        "--max-iters", "30", "--eval-interval", "30", "--eval-iters", "2", "--warmup-iters", "5", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    assert "hf tokenizer, 300 tokens" in result.output
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["tokenizer"]["name"] == "hf"
    assert config["tokenizer"]["state"]["tokenizer"] == json.loads(byte_level_file.read_text())

    byte_level_file_moved = byte_level_file.with_suffix(".gone")  # the export must not need the file
    byte_level_file.rename(byte_level_file_moved)
    try:
        onnx_path = tmp_path / "model.onnx"
        result = runner.invoke(cli, ["export", str(onnx_path), "--checkpoint", str(out)])
        assert result.exit_code == 0, result.output
        arguments = ["--prompt", "ROMEO: é", "--sampler", "greedy", "--max-new-tokens", "40"]
        sampled = runner.invoke(cli, ["sample", "--checkpoint", str(out), *arguments])
        ran = runner.invoke(cli, ["run", str(onnx_path), *arguments])
    finally:
        byte_level_file_moved.rename(byte_level_file)
    assert sampled.exit_code == 0 and ran.exit_code == 0, sampled.output + ran.output
    assert ran.output == sampled.output
    assert ran.output.startswith("ROMEO: é") and len(ran.output) > 20
