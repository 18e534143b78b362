"""Every file gen reads goes through one door (gen.core.reading): a device, a FIFO, JSON
or TOML nested 100,000 deep, an integer of 5,000 digits, a value of the wrong type, a
file whose numbers describe gigabytes, are each one line, at once, in little memory.
And no command replaces a folder that holds someone's run; written files follow the umask.

Each hostile file is a few KB built here. Where a case could hang or allocate, it runs
under `bounded`: an alarm that fails the test instead of waiting, or a child process
whose peak memory the test checks.
"""
import contextlib
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest
from reliability_helpers import TINY, assert_one_line_error, gen

from gen.core import GenError
from gen.core.reading import MAX_DEPTH, check_npy_header, load_toml, parse_json
from gen.core.tokenizer import tokenizer_from_dict

DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INTEGER = "1" + "0" * 5_000


@contextlib.contextmanager
def bounded(seconds=20):
    """Fail, instead of hanging, if the block takes longer than `seconds`."""
    def too_long(signum, frame):
        raise AssertionError(f"took more than {seconds} s: it hangs")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def peak_memory_of(*arguments) -> tuple[subprocess.CompletedProcess, int]:
    """Run `gen ARGUMENTS` in a child process; its result and peak memory (bytes).

    The peak is the child's own (VmHWM of /proc/self/status, in kB), not getrusage's ru_maxrss: a
    child that Python starts with vfork shares the test process's memory until it runs the new
    program, so its ru_maxrss also counts the test process's own peak (gigabytes, after some tests).
    """
    script = ("import sys\nfrom gen.core.cli import main\ntry:\n    main()\nfinally:\n"
              "    status = open('/proc/self/status').read()\n"
              "    print('peak', status.split('VmHWM:')[1].split()[0], file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", script, *map(str, arguments)], capture_output=True, text=True,
                            timeout=120)
    peak = int(result.stderr.rsplit("peak ", 1)[1].split()[0]) * 1024
    return result, peak


# --- the door itself -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_config_that_is_not_a_regular_file_is_refused_before_it_is_opened(tmp_path, monkeypatch, kind):
    path = {"device": "/dev/zero", "fifo": tmp_path / "fifo"}[kind]
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading would wait for a writer forever
    with bounded():
        assert_one_line_error(gen("train", "--config", path, "--out", tmp_path / "out"), str(path))
        monkeypatch.setenv("GEN_TRAIN_CONFIG", str(path))
        assert_one_line_error(gen("train", "--out", tmp_path / "out"), str(path))


@pytest.mark.parametrize("text, fragment", [
    (DEEP, f"nested more than {MAX_DEPTH} levels deep"),
    (HUGE_INTEGER, "an integer of 5,001 digits"),
    ('{"a": [1, 2', "is not JSON"),
])
def test_hostile_json_is_one_line(text, fragment):
    with bounded(), pytest.raises(GenError, match=fragment) as error:
        parse_json(text, "the test document")
    assert "\n" not in str(error.value)


def test_brackets_inside_strings_are_not_nesting():
    assert parse_json(json.dumps({"text": "[" * 1000}), "a document") == {"text": "[" * 1000}


@pytest.mark.parametrize("text", ["a = " + "[" * 100_000 + "]" * 100_000, f"max_iters = {HUGE_INTEGER}"])
def test_hostile_toml_is_one_line(tmp_path, text):
    (tmp_path / "run.toml").write_text(text)
    with bounded():
        assert_one_line_error(gen("train", "--config", tmp_path / "run.toml", "--out", tmp_path / "out"),
                              "run.toml")


def test_a_toml_fraction_for_a_whole_number_is_refused(tmp_path):
    (tmp_path / "run.toml").write_text("max_iters = 10.5\n")
    assert_one_line_error(gen("train", "--config", tmp_path / "run.toml", "--out", tmp_path / "out"),
                          "max_iters = 10.5 is not a whole number")


def test_a_toml_config_past_its_size_limit_is_refused(tmp_path):
    (tmp_path / "run.toml").write_text("# " + "x" * 2_000_000 + "\n")
    with pytest.raises(GenError, match="more than the 1.0 MB a TOML config may have"):
        load_toml(tmp_path / "run.toml")


# --- every JSON gen reads: nested 100,000 deep, or an integer of 5,000 digits -----------


def replace_json(path, text):
    path.write_text(text)


@pytest.mark.parametrize("payload", [DEEP, HUGE_INTEGER], ids=["deep", "huge-integer"])
@pytest.mark.parametrize("where, command", [
    ("best/config.json", ["sample", "--checkpoint", "RUN", "--max-new-tokens", "2"]),
    ("best/config.json", ["info", "RUN"]),
    ("latest/training_state.json", ["train", "--out", "RUN", "--resume", "--max-iters", "12"]),
    ("metrics.jsonl", ["plot", "RUN"]),
], ids=["config-sample", "config-info", "training-state", "metrics"])
def test_hostile_json_in_a_run_is_one_line(copy_of, payload, where, command):
    run = copy_of("run")
    replace_json(run / where, payload)
    with bounded():
        assert_one_line_error(gen(*[run if part == "RUN" else part for part in command]))


@pytest.mark.parametrize("payload", [DEEP, HUGE_INTEGER], ids=["deep", "huge-integer"])
@pytest.mark.parametrize("command", [["run", "MODEL", "--max-new-tokens", "2"], ["info", "MODEL"]])
def test_hostile_json_in_onnx_metadata_is_one_line(workspace, tmp_path, payload, command):
    proto = onnx.load(str(workspace / "model.onnx"))
    for entry in proto.metadata_props:
        if entry.key == "gen.model":
            entry.value = payload
    onnx.save(proto, str(tmp_path / "hostile.onnx"))
    with bounded():
        assert_one_line_error(gen(*[tmp_path / "hostile.onnx" if part == "MODEL" else part for part in command]),
                              "gen.model metadata")


def test_hostile_json_in_an_hf_tokenizer_file_is_one_line(tmp_path):
    pytest.importorskip("tokenizers")
    (tmp_path / "tokenizer.json").write_text('{"model": ' + DEEP + "}")
    from gen.core.data import train_tokenizer

    with bounded(), pytest.raises(GenError, match="nested more than"):
        train_tokenizer("text", f"hf:path={tmp_path / 'tokenizer.json'}")


def test_a_hostile_tokenizer_cache_entry_is_trained_again(workspace, tmp_path, monkeypatch):
    from gen.core import data

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    text = (workspace / "corpus.txt").read_text()
    first, _ = data.train_tokenizer(text, "bpe:vocab_size=300")
    [cached] = (tmp_path / "cache" / "gen" / "tokenizers").iterdir()
    cached.write_text(DEEP)
    with bounded():
        again, _ = data.train_tokenizer(text, "bpe:vocab_size=300")
    assert again.merges == first.merges


# --- values of the wrong type ------------------------------------------------------------


def edit_json(path, edit):
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize("edit, fragment", [
    (lambda config: config.update(step="abc"), "Expected `int`, got `str` - at `$.step`"),
    (lambda config: config.update(step=-3), "Expected `int` >= 0 - at `$.step`"),
    (lambda config: config.update(val_loss="low"), "at `$.val_loss`"),
    (lambda config: config["model"].update(name=7), "at `$.model.name`"),
    (lambda config: config.update(world_size=0), "at `$.world_size`"),
])
def test_a_checkpoint_config_of_the_wrong_types_names_the_field(copy_of, edit, fragment):
    run = copy_of("run")
    edit_json(run / "best" / "config.json", edit)
    assert_one_line_error(gen("info", run), fragment)
    assert_one_line_error(gen("sample", "--checkpoint", run, "--max-new-tokens", "2"), fragment)


@pytest.mark.parametrize("change, fragment", [
    ({"eps": -1}, "at `$.eps`"),
    ({"betas": [0.9, 1.5]}, "at `$.betas[1]`"),
    ({"lr": "fast"}, "at `$.lr`"),
])
def test_an_impossible_optimizer_state_is_refused_on_resume(copy_of, change, fragment):
    run = copy_of("run")
    edit_json(run / "latest" / "training_state.json", lambda state: state["param_groups"][0].update(change))
    assert_one_line_error(gen("train", "--out", run, "--resume", "--max-iters", "12"), "damaged training state",
                          fragment)


@pytest.mark.parametrize("line, fragment", [
    ({"step": "abc", "train_loss": 1.0, "val_loss": 1.0}, "at `$.step`"),
    ({"step": 4, "train_loss": "x", "val_loss": 1.0}, "at `$.train_loss`"),
    ({"step": 4, "train_loss": 1.0, "val_loss": None}, "at `$.val_loss`"),
    ({"step": 4, "train_loss": 1.0, "val_loss": 1.0, "lr": [1]}, "at `$.lr`"),
])
def test_a_metrics_line_of_the_wrong_types_is_one_line(copy_of, line, fragment):
    run = copy_of("run")
    number = len((run / "metrics.jsonl").read_text().splitlines()) + 1  # evaluations and --log-interval lines
    with open(run / "metrics.jsonl", "a") as file:
        file.write(json.dumps(line) + "\n")
    assert_one_line_error(gen("plot", run), f"line {number}", fragment)


def test_an_export_whose_training_metadata_has_the_wrong_types_is_one_line_in_info(workspace, tmp_path):
    proto = onnx.load(str(workspace / "model.onnx"))
    for entry in proto.metadata_props:
        if entry.key == "gen.training":
            entry.value = json.dumps({"step": "abc", "val_loss": "low"})
    onnx.save(proto, str(tmp_path / "odd.onnx"))
    assert_one_line_error(gen("info", tmp_path / "odd.onnx"), "gen.training metadata", "at `$.step`")


def test_a_checkpoint_whose_tokenizer_outgrows_its_model_is_refused_when_loaded(copy_of):
    run = copy_of("run")
    edit_json(run / "best" / "config.json",
              lambda config: config.update(tokenizer={"name": "byte", "state": {}}))  # 256 tokens, model < 100
    assert_one_line_error(gen("sample", "--checkpoint", run, "--max-new-tokens", "2"), "more than the")


# --- estimates before allocating -----------------------------------------------------------


def test_a_config_that_describes_more_than_its_weights_is_refused_before_building(copy_of):
    run = copy_of("run")
    # 2^21 x 512: 4 GB, which a large machine has; the weights beside it are a few KB
    edit_json(run / "best" / "config.json",
              lambda config: config["model"]["config"].update(vocab_size=2**21, n_embd=512, n_head=8))
    result, peak = peak_memory_of("sample", "--checkpoint", run, "--max-new-tokens", "2")
    # (a machine with less than 4 GB free refuses it by the estimate alone)
    assert result.returncode == 1 and ("do not fit the gpt config" in result.stderr or "needs about" in result.stderr), \
        result.stderr
    assert peak < 1_500_000_000  # torch itself, and no model


def test_a_npy_header_declaring_more_than_its_file_is_refused(tmp_path):
    path = tmp_path / "tokens.npy"
    with open(path, "wb") as file:  # a 128-byte file that declares 10^11 elements
        np.lib.format.write_array_header_1_0(file, {"descr": "<u2", "fortran_order": False, "shape": (10**11,)})
        file.write(b"\0" * 8)
    with bounded(), pytest.raises(GenError, match="declares 100,000,000,000 elements"):
        check_npy_header(path, "token cache")


def test_a_bpe_state_whose_tokens_add_up_to_gigabytes_is_refused():
    # a token of 32,768 bytes (15 doublings), then 2,300 tokens each a byte longer
    merges = [[97, 97]] + [[256 + i, 256 + i] for i in range(14)]
    big = 256 + 14
    merges += [[big, byte] for byte in range(256)]
    merges += [[big + 1 + token, byte] for token in range(256) for byte in range(8)]
    with bounded(), pytest.raises(GenError, match="bytes in all"):
        tokenizer_from_dict({"name": "bpe", "state": {"merges": merges}})


def test_a_step_of_100_billion_in_metrics_plots_at_once(copy_of):
    run = copy_of("run")
    with open(run / "metrics.jsonl", "a") as file:
        file.write(json.dumps({"step": 10**11, "train_loss": 1.0, "val_loss": 1.0}) + "\n")
    with bounded(60):
        result = gen("plot", run)
    assert result.exit_code == 0, result.output


# --- hostile nanoGPT files ------------------------------------------------------------------


def billion_laughs() -> bytes:
    """Nine levels of a list that holds the level below 100 times, through the memo: 100^9 items."""
    # pickle protocol 2 opcodes: ] empty list, q n memo it as n, ( mark, K 1, e append
    # what follows the mark, h n the memo's n, 0 pop; } empty dict, X a string, u set items
    body = bytearray(b"\x80\x02")
    body += b"]q\x00(" + b"K\x01" * 100 + b"e0"  # level 0: a list of 100 ones
    for level in range(1, 10):
        body += b"]q" + bytes([level]) + b"(" + (b"h" + bytes([level - 1])) * 100 + b"e0"
    body += b"}(X\x04\x00\x00\x00itosh\x09u."
    return bytes(body)


def test_a_billion_laughs_meta_pkl_ends_at_once(tmp_path):
    from gen.core.reading import load_plain_pickle

    (tmp_path / "meta.pkl").write_bytes(billion_laughs())
    with bounded():
        value = load_plain_pickle(tmp_path / "meta.pkl")  # plain data: read, each list visited once
    assert isinstance(value["itos"], list)


def nanogpt_checkpoint(path, **model_args):
    import torch

    weights = {"transformer.wte.weight": torch.zeros(4, 4), "lm_head.weight": torch.zeros(4, 4)}
    torch.save({"model": weights, "model_args": {"vocab_size": 4, "block_size": 4, "n_layer": 1, "n_head": 1,
                                                 "n_embd": 4, **model_args}, "iter_num": 1}, path)


def test_a_nanogpt_checkpoint_whose_model_args_describe_gigabytes_is_refused_before_building(tmp_path):
    nanogpt_checkpoint(tmp_path / "ckpt.pt", vocab_size=2**21, n_embd=512, n_head=8)
    pickle.dump({"itos": {0: "a", 1: "b"}, "stoi": {"a": 0, "b": 1}}, open(tmp_path / "meta.pkl", "wb"))
    result, peak = peak_memory_of("import", "nanogpt", tmp_path / "ckpt.pt", "--meta", tmp_path / "meta.pkl",
                                  "--out", tmp_path / "out")
    assert result.returncode == 1 and "do not fit nanoGPT's GPT" in result.stderr, result.stderr
    assert peak < 1_500_000_000


def test_a_nanogpt_iter_num_that_is_not_a_step_is_one_line(tmp_path):
    import torch

    nanogpt_checkpoint(tmp_path / "ckpt.pt")
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    checkpoint["iter_num"] = "abc"
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    pickle.dump({"itos": {0: "a", 1: "b"}}, open(tmp_path / "meta.pkl", "wb"))
    assert_one_line_error(gen("import", "nanogpt", tmp_path / "ckpt.pt", "--meta", tmp_path / "meta.pkl",
                              "--out", tmp_path / "out"), "iter_num is 'abc'")


def test_a_zip_bomb_checkpoint_is_refused_before_inflating(tmp_path):
    path = tmp_path / "ckpt.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * 4_000_000)  # 4 MB in about 4 KB
    with bounded():
        assert_one_line_error(gen("import", "nanogpt", path, "--meta", path, "--out", tmp_path / "out"),
                              "inflates", "zip bomb")


# --- no command wipes a run ------------------------------------------------------------------


def test_export_genai_overwrite_never_replaces_a_run(copy_of):
    run = copy_of("run")
    before = sorted(path.name for path in run.iterdir())
    result = gen("export", "--genai", run, "--checkpoint", run / "best", "--overwrite", "--no-verify")
    assert_one_line_error(result, "which gen did not write there")
    assert sorted(path.name for path in run.iterdir()) == before


def test_import_overwrite_never_replaces_a_run(copy_of, tmp_path):
    run = copy_of("run")
    nanogpt_checkpoint(tmp_path / "ckpt.pt")
    pickle.dump({"itos": {0: "a", 1: "b"}}, open(tmp_path / "meta.pkl", "wb"))
    result = gen("import", "nanogpt", tmp_path / "ckpt.pt", "--meta", tmp_path / "meta.pkl", "--out", run,
                 "--overwrite")
    assert_one_line_error(result, "which gen did not write there")
    assert (run / "best" / "model.safetensors").exists() and (run / "metrics.jsonl").exists()


# --- caches ------------------------------------------------------------------------------------


def test_a_fifo_in_place_of_the_token_cache_is_encoded_again(workspace, tmp_path, monkeypatch):
    from gen.core import data

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = data.load_dataset(str(workspace / "corpus.txt"), tokenizer_spec="char", progress=False)
    for cached in (tmp_path / "cache" / "gen" / "tokens").iterdir():
        cached.unlink()
        os.mkfifo(cached)
    with bounded():
        again = data.load_dataset(str(workspace / "corpus.txt"), tokenizer_spec="char", progress=False)
    np.testing.assert_array_equal(again.train_ids, first.train_ids)


def test_a_cache_that_cannot_be_written_is_skipped_with_a_note(workspace, tmp_path, monkeypatch, capsys):
    from gen.core import data

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "gen").write_text("a file where the cache folder goes")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dataset = data.load_dataset(str(workspace / "corpus.txt"), tokenizer_spec="char", progress=False)
    assert len(dataset.train_ids) > 0
    assert "note: not cached" in capsys.readouterr().err


# --- modes ---------------------------------------------------------------------------------------


def test_written_files_follow_the_umask_and_overwrite_keeps_the_mode(workspace, tmp_path):
    previous = os.umask(0o022)
    try:
        result = gen("train", "--data", workspace / "corpus.txt", "--out", tmp_path / "run", *TINY,
                     "--max-iters", "2", "--eval-interval", "2")
        assert result.exit_code == 0, result.output
        assert stat.S_IMODE(os.stat(tmp_path / "run" / "latest").st_mode) == 0o755
        assert stat.S_IMODE(os.stat(tmp_path / "run" / "latest" / "config.json").st_mode) == 0o644
        assert gen("export", tmp_path / "model.onnx", "--checkpoint", tmp_path / "run", "--no-verify").exit_code == 0
        assert stat.S_IMODE(os.stat(tmp_path / "model.onnx").st_mode) == 0o644
        os.chmod(tmp_path / "model.onnx", 0o640)
        result = gen("export", tmp_path / "model.onnx", "--checkpoint", tmp_path / "run", "--no-verify",
                     "--overwrite")
        assert result.exit_code == 0, result.output
        assert stat.S_IMODE(os.stat(tmp_path / "model.onnx").st_mode) == 0o640
    finally:
        os.umask(previous)



# --- the low items ----------------------------------------------------------------------------


def test_an_empty_out_is_refused_rather_than_training_into_the_current_folder(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(gen("train", "--data", workspace / "corpus.txt", "--out", "", *TINY), "--out is empty")
    assert list(tmp_path.iterdir()) == []


def test_rank_without_torchruns_other_variables_is_one_line(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    result = gen("train", "--data", workspace / "corpus.txt", "--out", tmp_path / "run", *TINY)
    assert_one_line_error(result, "MASTER_ADDR", "torchrun")


@pytest.mark.parametrize("vocab_size", ["many", -1])
def test_plot_of_a_run_whose_checkpoint_has_an_impossible_vocabulary_draws_without_its_baseline(copy_of, vocab_size):
    run = copy_of("run")
    edit_json(run / "latest" / "config.json", lambda config: config["model"]["config"].update(vocab_size=vocab_size))
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # without a recorded uniform_loss, the baseline would be ln(vocab_size)
    (run / "metrics.jsonl").write_text("".join(json.dumps({key: value for key, value in line.items()
                                                           if key != "uniform_loss"}) + "\n" for line in lines))
    result = gen("plot", run)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_chat_template_or_schema_that_is_not_a_regular_file_is_refused(workspace, tmp_path, kind):
    path = {"device": "/dev/zero", "fifo": tmp_path / "fifo"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    with bounded():
        assert_one_line_error(gen("export", tmp_path / "model.onnx", "--checkpoint", workspace / "run",
                                  "--chat-template", path), "chat template", "not a regular file")
        assert_one_line_error(gen("run", workspace / "model.onnx", "--json-schema", path, "--max-new-tokens", "2"),
                              "json schema file", "not a regular file")
