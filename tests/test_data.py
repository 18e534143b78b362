"""Training data: the downloader (against a local HTTP server), reading the corpus,
the tokenizer and token caches, and the 90/10 split."""
import dataclasses
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from gen.core import data
from gen.core.errors import GenError
from gen.core.registry import get_registry

SHAKESPEARE = Path(__file__).resolve().parent / "data" / "tinyshakespeare-excerpt.txt"  # its first 59,804 characters
GOOD_BODY = b"To be, or not to be, that is the question.\n" * 200
GOOD_SHA256 = hashlib.sha256(GOOD_BODY).hexdigest()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own user cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gen"


class CorpusServer(http.server.BaseHTTPRequestHandler):
    """/good and /shakespeare serve whole files, /wrong other bytes, /short a
    Content-Length larger than what it sends before closing the connection."""

    requests: list[str] = []

    def do_GET(self):
        CorpusServer.requests.append(self.path)
        if self.path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD_BODY)))
            self.end_headers()
            self.wfile.write(GOOD_BODY[: len(GOOD_BODY) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        bodies = {
            "/good": GOOD_BODY,
            "/wrong": GOOD_BODY.replace(b"question", b"answer!!"),
            "/shakespeare": SHAKESPEARE.read_bytes(),
        }
        if self.path not in bodies:
            self.send_error(404)
            return
        body = bodies[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CorpusServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_writes_the_file_when_its_checksum_matches(server, tmp_path, capsys):
    destination = tmp_path / "corpus" / "good.txt"
    data.download(f"{server}/good", destination, GOOD_SHA256)
    assert destination.read_bytes() == GOOD_BODY
    assert list(destination.parent.iterdir()) == [destination]  # no temporary file left
    assert "downloading" in capsys.readouterr().err  # progress is shown


def test_wrong_checksum_is_rejected_and_leaves_nothing(server, tmp_path):
    destination = tmp_path / "corpus" / "wrong.txt"
    with pytest.raises(GenError, match="sha256") as error:
        data.download(f"{server}/wrong", destination, GOOD_SHA256, progress=False)
    assert "--data" in str(error.value)
    assert list(destination.parent.iterdir()) == []


def test_interrupted_transfer_leaves_nothing(server, tmp_path):
    destination = tmp_path / "corpus" / "short.txt"
    with pytest.raises(GenError, match="broke off") as error:
        data.download(f"{server}/short", destination, GOOD_SHA256, progress=False)
    assert "--data" in str(error.value)
    assert list(destination.parent.iterdir()) == []


def test_offline_error_says_so_and_names_data_path(tmp_path):
    unused_port = "http://127.0.0.1:9/corpus.txt"  # the discard port: nobody listens there
    with pytest.raises(GenError) as error:
        data.download(unused_port, tmp_path / "x.txt", GOOD_SHA256, progress=False)
    message = str(error.value)
    assert "offline" in message and "--data PATH" in message and "\n" not in message
    assert not (tmp_path / "x.txt").exists()


def test_http_error_is_reported(server, tmp_path):
    with pytest.raises(GenError, match="404"):
        data.download(f"{server}/missing", tmp_path / "x.txt", GOOD_SHA256, progress=False)


def test_shakespeare_is_downloaded_once_into_the_user_cache(server, monkeypatch, private_cache):
    # The server serves the repository's excerpt, so the pinned checksum becomes the excerpt's.
    excerpt_sha256 = hashlib.sha256(SHAKESPEARE.read_bytes()).hexdigest()
    monkeypatch.setitem(data.KNOWN_CORPORA, "shakespeare",
                        dataclasses.replace(data.KNOWN_CORPORA["shakespeare"], sha256=excerpt_sha256))
    monkeypatch.setenv("GEN_SHAKESPEARE_URL", f"{server}/shakespeare")
    CorpusServer.requests.clear()
    path = data.corpus_path("shakespeare", progress=False)
    assert path == private_cache / "corpora" / "tinyshakespeare.txt"
    assert path.read_bytes() == SHAKESPEARE.read_bytes()
    assert data.corpus_path("shakespeare", progress=False) == path
    assert CorpusServer.requests == ["/shakespeare"]  # the second call used the cache


def test_cache_dir_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "elsewhere"))
    assert data.cache_dir() == tmp_path / "elsewhere" / "gen"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.cache_dir() == Path.home() / ".cache" / "gen"


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"caf\xe9 au lait", "not UTF-8"),
])
def test_bad_corpus_is_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(GenError, match=message) as error:
        data.read_text(path)
    assert "\n" not in str(error.value)


def test_missing_corpus_names_the_known_corpora(tmp_path):
    with pytest.raises(GenError, match="does not exist.*shakespeare"):
        data.read_text(tmp_path / "nope.txt")


def test_split_is_ninety_ten_and_in_order():
    ids = np.arange(1000)
    train, val = data.split_tokens(ids)
    assert len(train) == 900 and len(val) == 100
    np.testing.assert_array_equal(np.concatenate([train, val]), ids)


def test_dataset_is_encoded_once_and_then_read_from_the_cache(tmp_path, monkeypatch, private_cache):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    first = data.load_dataset(str(corpus), tokenizer_spec="char")
    assert first.tokenizer.vocab_size == len(set(corpus.read_text(encoding="utf-8")))
    assert len(first.train_ids) == 18_000 and len(first.val_ids) == 2_000
    assert len(list((private_cache / "tokens").glob("*.npy"))) == 1

    char_class = get_registry().get("tokenizer", "char")

    def refuse(*args, **kwargs):
        raise AssertionError("encoded or trained again despite the cache")

    monkeypatch.setattr(char_class, "encode", refuse)
    monkeypatch.setattr(char_class, "train", classmethod(refuse))
    second = data.load_dataset(str(corpus), tokenizer_spec="char")
    np.testing.assert_array_equal(second.train_ids, first.train_ids)
    np.testing.assert_array_equal(second.val_ids, first.val_ids)
    # A checkpoint's tokenizer (rebuilt from its document) finds the same cached tokens.
    third = data.load_dataset(str(corpus), tokenizer_document=first.tokenizer_document)
    np.testing.assert_array_equal(third.val_ids, first.val_ids)


def test_tokenizer_options_reach_the_tokenizer(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:5_000], encoding="utf-8")
    dataset = data.load_dataset(str(corpus), tokenizer_spec="bpe:vocab_size=300")
    assert dataset.tokenizer.vocab_size == 300
    assert dataset.tokenizer_document["name"] == "bpe"
    with pytest.raises(GenError, match="malformed tokenizer spec"):
        data.load_dataset(str(corpus), tokenizer_spec="bpe:vocab_size")
    with pytest.raises(GenError, match="unknown tokenizer"):
        data.load_dataset(str(corpus), tokenizer_spec="nonesuch")


def test_a_split_shorter_than_block_size_plus_one_is_an_error(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcdefghij" * 10, encoding="utf-8")  # 100 tokens: 90 train, 10 val
    dataset = data.load_dataset(str(corpus), tokenizer_spec="char")
    data.check_split_lengths(dataset, block_size=9)
    with pytest.raises(GenError, match="val split .* 10 tokens.*block_size \\+ 1 = 11"):
        data.check_split_lengths(dataset, block_size=10)
