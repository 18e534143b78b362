"""`gen prepare` and `gen train --data FOLDER`: corpora kept on disk as token shards.

Real runs of a tiny GPT on a slice of Tiny Shakespeare: the shards hold the ids gen
train reads from the text, so training on them is bit for bit training on the text, and
--resume continues bit for bit; nanoGPT's own .bin files (made as its prepare.py makes
them) train as they are; a jsonl file of records through Hugging Face datasets; two
torchrun processes reading the same shards; every bad folder refused in one line before
training; and a prepare killed midway leaves nothing half-written behind.
"""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gen.core.data import load_dataset
from cli_helpers import gen

BIN = Path(sys.executable).parent
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--eval-iters", "2",
        "--warmup-iters", "2", "--lr-decay-iters", "8", "--dtype", "float32", "--device", "cpu"]
pytestmark = pytest.mark.usefixtures("module_cache")  # before the module-scoped runs below


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def train(data, out, *arguments, max_iters=8):
    return ok(gen("train", "--data", data, "--out", out, *TINY, "--batch-size", 8, "--max-iters", max_iters,
                  "--eval-interval", 4, *arguments))


def weights(run: Path) -> dict:
    return load_file(str(run / "latest" / "model.safetensors"))


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def one_line_error(result, *fragments):
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def index_of(folder: Path) -> dict:
    return json.loads((folder / "index.json").read_text())


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    """The corpus as char shards of 10,000 ids (4 shards), encoded by 2 processes."""
    folder = tmp_path_factory.mktemp("prepared") / "shards"
    ok(gen("prepare", "--data", corpus, "--out", folder, "--shard-tokens", 10_000, "--workers", 2))
    return folder


@pytest.fixture(scope="module")
def text_run(corpus, tmp_path_factory):
    """8 steps on the text file itself: what every run on the same ids must equal."""
    out = tmp_path_factory.mktemp("text") / "run"
    train(corpus, out)
    return out


# --- prepare, train, resume -------------------------------------------------------------


def test_the_shards_hold_the_ids_gen_train_reads_from_the_text(corpus, prepared):
    index = index_of(prepared)
    assert index["dtype"] == "uint16" and index["tokenizer_spec"] == "char"
    assert [shard["tokens"] for shard in index["shards"]] == [10_000] * 4
    from_text, from_shards = load_dataset(str(corpus)), load_dataset(str(prepared))
    assert from_shards.tokenizer_document == from_text.tokenizer_document
    assert np.array_equal(from_shards.train_ids[:], from_text.train_ids)
    assert np.array_equal(np.asarray(from_shards.val_ids), from_text.val_ids)
    raw = np.concatenate([np.fromfile(prepared / shard["file"], dtype=np.uint16) for shard in index["shards"]])
    assert np.array_equal(raw, np.concatenate([from_text.train_ids, from_text.val_ids]))


def test_training_on_shards_is_training_on_the_text_and_resumes_bit_for_bit(prepared, text_run, tmp_path):
    train(prepared, tmp_path / "straight")
    assert equal(weights(tmp_path / "straight"), weights(text_run))  # the same batches, drawn from disk
    config = json.loads((tmp_path / "straight" / "latest" / "config.json").read_text())
    assert config["train_args"]["data"] == str(prepared) and config["train_args"]["tokenizer"] == "char"

    train(prepared, tmp_path / "resumed", max_iters=4)
    ok(gen("train", "--out", tmp_path / "resumed", "--resume", "--max-iters", 8))
    assert equal(weights(tmp_path / "resumed"), weights(tmp_path / "straight"))


def test_nanogpt_bin_files_train_as_they_are(corpus, text_run, tmp_path):
    # as nanoGPT's data/shakespeare_char/prepare.py makes them
    data = corpus.read_text(encoding="utf-8")
    chars = sorted(set(data))
    stoi, itos = {ch: i for i, ch in enumerate(chars)}, dict(enumerate(chars))
    n = len(data)
    folder = tmp_path / "shakespeare_char"
    folder.mkdir()
    np.array([stoi[c] for c in data[:int(n * 0.9)]], dtype=np.uint16).tofile(folder / "train.bin")
    np.array([stoi[c] for c in data[int(n * 0.9):]], dtype=np.uint16).tofile(folder / "val.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)

    train(folder, tmp_path / "run")  # nanoGPT splits 90/10 at the same character gen does
    assert equal(weights(tmp_path / "run"), weights(text_run))
    ok(gen("prepare", "--data", folder, "--out", tmp_path / "copied"))  # the same ids, now with sums
    assert np.array_equal(load_dataset(str(tmp_path / "copied")).val_ids[:], load_dataset(str(folder)).val_ids[:])

    (folder / "meta.pkl").unlink()  # GPT-2's tiktoken ids: they need GPT-2's tokenizer
    one_line_error(gen("train", "--data", folder, "--out", tmp_path / "gpt2", *TINY), "without meta.pkl",
                   "--tokenizer hf:path=tokenizer.json")
    one_line_error(gen("train", "--data", folder, "--out", tmp_path / "gpt2", "--tokenizer", "bpe", *TINY),
                   "not bpe")


def test_a_local_datasets_source(corpus, tmp_path):
    pytest.importorskip("datasets", reason="Hugging Face datasets is the optional extra 'datasets'")
    lines = corpus.read_text(encoding="utf-8").split("\n\n")
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"id": i, "body": line}) + "\n" for i, line in enumerate(lines)))
    one_line_error(gen("prepare", "--data", records, "--out", tmp_path / "no"), "no column 'text'", "'body'")
    ok(gen("prepare", "--data", records, "--text-column", "body", "--out", tmp_path / "shards"))
    ids = load_dataset(str(tmp_path / "shards"))
    assert ids.tokenizer.decode(ids.train_ids[:200].tolist()) == "\n".join(lines)[:200]
    train(tmp_path / "shards", tmp_path / "run", max_iters=2)


def test_two_torchrun_processes_read_the_same_shards(prepared, tmp_path):
    """2 processes of batch 4 draw what one process of batch 8 draws: the same weights."""
    single = tmp_path / "single"
    ok(gen("train", "--data", prepared, "--out", single, *TINY, "--batch-size", 8, "--max-iters", 4))
    completed = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(BIN / "gen"), "train",
         "--data", str(prepared), "--out", "pair", *TINY, "--batch-size", "4", "--max-iters", "4"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stdout + completed.stderr
    pair, alone = weights(tmp_path / "pair"), weights(single)
    assert all(torch.allclose(pair[key], alone[key], rtol=0, atol=1e-4) for key in alone)


# --- bad folders: one line, before training ----------------------------------------------


@pytest.fixture
def copy_of(prepared, tmp_path):
    import shutil

    folder = tmp_path / "shards"
    shutil.copytree(prepared, folder)
    return folder


def test_a_shard_cut_short_is_refused(copy_of, tmp_path):
    shard = copy_of / "shard-00002.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    one_line_error(gen("train", "--data", copy_of, "--out", tmp_path / "run", *TINY),
                   "shard-00002.bin", "19,998 bytes", "10,000 uint16 tokens", "prepare the corpus again")


def test_a_changed_shard_is_refused_by_verify(copy_of, tmp_path):
    shard = copy_of / "shard-00001.bin"
    ids = np.fromfile(shard, dtype=np.uint16)
    ids[5000] = (ids[5000] + 1) % 10  # still a character of the vocabulary, the same size
    ids.tofile(shard)
    one_line_error(gen("train", "--data", copy_of, "--out", tmp_path / "run", *TINY, "--verify"),
                   "shard-00001.bin", "sha256 differs")


def test_ids_past_the_vocabulary_are_refused(copy_of, tmp_path):
    index = index_of(copy_of)
    index["shards"][3]["max_id"] = 70  # the vocabulary has 58 characters
    (copy_of / "index.json").write_text(json.dumps(index))
    one_line_error(gen("train", "--data", copy_of, "--out", tmp_path / "run", *TINY), "holds id 70",
                   "58 tokens")


def test_an_index_of_another_tokenizer_is_refused(copy_of, corpus, tmp_path):
    """--resume's and --init-from's tokenizer, and --tokenizer, must be the folder's."""
    train(copy_of, tmp_path / "run", max_iters=2)
    ok(gen("train", "--data", copy_of, "--init-from", tmp_path / "run", "--out", tmp_path / "tuned", "--max-iters", 2,
           "--device", "cpu"))  # the folder's own tokenizer: a fine-tune on it trains
    ok(gen("prepare", "--data", corpus, "--tokenizer", "byte", "--out", copy_of, "--overwrite"))
    one_line_error(gen("train", "--out", tmp_path / "run", "--resume", "--max-iters", 4),
                   "prepared with another tokenizer")
    one_line_error(gen("train", "--data", copy_of, "--init-from", tmp_path / "run", "--out", tmp_path / "retuned",
                       "--max-iters", 2, "--device", "cpu"), "prepared with another tokenizer")
    one_line_error(gen("train", "--data", copy_of, "--out", tmp_path / "other", "--tokenizer", "char", *TINY),
                   "prepared with --tokenizer byte, not char")


def test_an_empty_corpus_is_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    one_line_error(gen("prepare", "--data", tmp_path / "empty.txt", "--tokenizer", "byte", "--out", tmp_path / "o"),
                   "is empty")
    assert not (tmp_path / "o").exists()


def test_an_interrupted_prepare_leaves_nothing_half_written(text, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text(text * 200, encoding="utf-8")  # 12 MB: a few seconds of encoding
    out = tmp_path / "shards"
    command = [str(BIN / "gen"), "prepare", "--data", str(big), "--out", str(out), "--shard-tokens", "100000"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(tmp_path.glob(".shards.new-*/shard-00002.bin")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert any(tmp_path.glob(".shards.new-*/shard-*.bin")), "killed before it wrote a shard"
    assert not out.exists()  # no index, no shards: nothing gen train could take for a corpus
    ok(gen("prepare", "--data", big, "--out", out, "--shard-tokens", 1_000_000))  # starts over, and cleans up
    assert sorted(path.name for path in tmp_path.iterdir()) == ["big.txt", "shards"]
    assert sum(shard["tokens"] for shard in index_of(out)["shards"]) == len(text) * 200


@pytest.mark.parametrize("mapped_bytes", [None, 300, 0])
def test_windows_across_shard_boundaries(tmp_path, monkeypatch, mapped_bytes):
    """Batch rows gathered from the maps, rows that run from one shard into the next (an empty
    shard between them included), and rows of shards past the mapping budget (an address-space
    limit's) are the ids of the stream."""
    from gen.core import shards

    if mapped_bytes is not None:
        monkeypatch.setattr(shards, "MAPPED_BYTES", mapped_bytes)
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 1000, size=n, dtype=np.uint16) for n in (100, 7, 250, 0, 60)]
    for number, part in enumerate(parts):
        part.tofile(tmp_path / f"{number}.bin")
    stream = np.concatenate(parts).astype(np.int64)
    tokens = shards.ShardedTokens([tmp_path / f"{n}.bin" for n in range(5)], [len(p) for p in parts], "uint16")
    view = tokens.view(20, 400)
    for length in (1, 5, 33, 65):
        starts = rng.integers(0, len(view) - length + 1, size=50)
        expected = np.stack([stream[20 + start:20 + start + length] for start in starts])
        assert np.array_equal(view.windows(starts, length), expected), length
    assert np.array_equal(view[:], stream[20:400]) and np.array_equal(np.asarray(tokens), stream)
    assert sum(mapped.nbytes for mapped in tokens.maps.values()) <= tokens.mapped_bytes


def test_a_char_vocabulary_learned_from_the_sample_says_what_it_lacks(tmp_path, monkeypatch):
    from gen.core.training import prepare

    monkeypatch.setattr(prepare, "SAMPLE_BYTES", 100)
    monkeypatch.setattr(prepare, "CHUNK_BYTES", 100)
    (tmp_path / "corpus.txt").write_text("abc abc\n" * 50 + "a rare z\n")
    one_line_error(gen("prepare", "--data", tmp_path / "corpus.txt", "--out", tmp_path / "out"),
                   "character 'r'", "learned its vocabulary from the first", "prepare with byte or bpe")
    assert not (tmp_path / "out").exists()
    ok(gen("prepare", "--data", tmp_path / "corpus.txt", "--tokenizer", "byte", "--out", tmp_path / "out"))
