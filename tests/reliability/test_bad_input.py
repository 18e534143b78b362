"""Clumsy or hostile options and paths: one line, a non-zero exit, nothing written
half-way, nothing lost."""
import os
import shutil
import subprocess

import pytest
from reliability_helpers import TINY, assert_one_line_error, gen

from gen.core import GenError
from gen.runtime.onnx_model import OnnxModel

# --- seeds, learning rates, temperatures, threads ---------------------------------------


@pytest.mark.parametrize("command", ["run", "sample"])
def test_a_negative_seed_is_refused(workspace, command):
    target = [workspace / "model.onnx"] if command == "run" else ["--checkpoint", workspace / "run"]
    result = gen(command, *target, "--seed", "-1")
    assert result.exit_code == 2 and "--seed" in result.output and "Traceback" not in result.output


def test_a_seed_too_large_for_torch_is_refused_before_the_data_loads(workspace, tmp_path):
    result = gen("train", "--data", workspace / "corpus.txt", "--out", tmp_path / "out",
                 "--seed", "123456789012345678901234567890")
    assert result.exit_code == 2 and "--seed" in result.output and "Traceback" not in result.output


def test_the_python_api_refuses_a_negative_seed(workspace):
    with pytest.raises(GenError, match="seed must be a whole number >= 0"):
        OnnxModel(workspace / "model.onnx").generate(["a"], seed=-1)


@pytest.mark.parametrize("lr", ["nan", "inf"])
def test_a_learning_rate_that_is_not_a_number_is_refused(workspace, tmp_path, lr):
    result = gen("train", "--data", workspace / "corpus.txt", "--out", tmp_path / "out", "--lr", lr)
    assert_one_line_error(result, "--lr must be at least 0.0")
    assert not (tmp_path / "out").exists()


def test_a_run_whose_loss_becomes_nan_stops_and_keeps_its_last_good_checkpoint(copy_of):
    run = copy_of("run")
    before = (run / "latest" / "model.safetensors").read_bytes()
    result = gen("train", "--out", run, "--resume", "--max-iters", 40, "--lr", "1e6", "--grad-clip", "0",
                 "--dtype", "float32")
    assert_one_line_error(result, "training diverged", "the last good checkpoint (step 8) is kept")
    assert (run / "latest" / "model.safetensors").read_bytes() == before


def test_eval_of_a_broken_model_is_an_error_not_nan(copy_of):
    from safetensors.torch import load_file, save_file

    run = copy_of("run")
    weights = load_file(str(run / "best" / "model.safetensors"))
    weights = {name: tensor.fill_(float("nan")) for name, tensor in weights.items()}
    save_file(weights, str(run / "best" / "model.safetensors"))
    assert_one_line_error(gen("eval", "--checkpoint", run), "scores a loss of nan", "the model is broken")


def test_a_temperature_that_overflows_float32_is_refused(workspace):
    result = gen("run", workspace / "model.onnx", "--sampler", "temperature:t=1e-45", "--max-new-tokens", 5)
    assert_one_line_error(result, "below 0.0001", "use --sampler greedy")


@pytest.mark.parametrize("spec, message", [
    ("temperature:t=1e39", "within float32's range"),
    ("mirostat:tau=1e308", "tau > 0 and at most 1000"),
    ("mirostat:eta=1e308", "eta > 0 and at most 1000"),
])
def test_sampler_options_beyond_float32_are_one_line_without_numpy_warnings(workspace, spec, message):
    result = gen("run", workspace / "model.onnx", "--sampler", spec, "--max-new-tokens", 5)
    assert_one_line_error(result, message)
    assert "RuntimeWarning" not in result.output


def test_a_thread_count_past_the_machines_is_refused(workspace):
    result = gen("run", workspace / "model.onnx", "--threads", "100000")
    assert_one_line_error(result, "threads must be a whole number from 1 to")
    with pytest.raises(GenError, match="threads must be a whole number from 1 to"):
        OnnxModel(workspace / "model.onnx", threads=100_000)


# --- corpora that never end -------------------------------------------------------------


def test_an_endless_device_or_a_pipe_is_refused_as_a_corpus(tmp_path):
    assert_one_line_error(gen("train", "--data", "/dev/zero", "--out", tmp_path / "out"), "not a regular file")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert_one_line_error(gen("train", "--data", fifo, "--out", tmp_path / "out"), "not a regular file")
    assert not (tmp_path / "out").exists()


def test_a_corpus_larger_than_memory_is_refused_with_its_size(tmp_path, monkeypatch):
    from gen.core import limits

    corpus = tmp_path / "big.txt"
    corpus.write_text("to be or not to be " * 1000)
    monkeypatch.setattr(limits, "available_memory", lambda: 50_000)  # as if the machine had 50 kB free
    result = gen("train", "--data", corpus, "--out", tmp_path / "out")
    assert_one_line_error(result, "(19.0 KB) needs about 152.0 KB of memory, more than the 50.0 KB available")


# --- where gen export and gen train write -----------------------------------------------


def test_export_never_overwrites_without_being_told(workspace, tmp_path):
    target = tmp_path / "model.onnx"
    target.write_text("my notes")
    assert_one_line_error(gen("export", target, "--checkpoint", workspace / "run"),
                          "already exists; give --overwrite")
    assert target.read_text() == "my notes"
    result = gen("export", target, "--checkpoint", workspace / "run", "--overwrite", "--no-verify")
    assert result.exit_code == 0, result.output
    assert target.read_bytes()[:4] != b"my n"


def test_export_refuses_to_write_inside_a_checkpoint(copy_of):
    run = copy_of("run")
    weights = (run / "best" / "model.safetensors").read_bytes()
    for target in (run / "best" / "model.safetensors", run / "best" / "model.onnx"):
        assert_one_line_error(gen("export", target, "--checkpoint", run, "--overwrite"),
                              "is inside the checkpoint folder")
    assert (run / "best" / "model.safetensors").read_bytes() == weights


def test_an_empty_export_path_is_refused(workspace):
    assert_one_line_error(gen("export", "", "--checkpoint", workspace / "run"), "the export path is empty")


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_a_symbolic_link_that_leads_nowhere_is_refused(workspace, tmp_path, kind):
    link = tmp_path / "link"
    if kind == "dangling":
        link.symlink_to(tmp_path / "nowhere")
    else:
        link.symlink_to(link)
    assert_one_line_error(gen("train", "--data", workspace / "corpus.txt", "--out", link),
                          "a symbolic link that leads nowhere")
    assert_one_line_error(gen("export", link / "model.onnx", "--checkpoint", workspace / "run"),
                          "a symbolic link that leads nowhere")


def test_a_file_where_a_folder_is_expected_is_refused(workspace, tmp_path):
    (tmp_path / "file").write_text("x")
    assert_one_line_error(gen("train", "--data", workspace / "corpus.txt", "--out", tmp_path / "file" / "run"),
                          "to be a folder, but it is a file")
    assert_one_line_error(gen("export", tmp_path / "file" / "m.onnx", "--checkpoint", workspace / "run"),
                          "to be a folder, but it is a file")


def test_a_path_that_is_not_utf8_is_refused_before_training(workspace, tmp_path):
    out = os.fsdecode(os.fsencode(tmp_path) + b"/run\xff")
    assert_one_line_error(gen("train", "--data", workspace / "corpus.txt", "--out", out, *TINY),
                          "is not valid UTF-8")
    assert not os.path.exists(out)


def chattr(flag: str, path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_an_unwritable_run_directory_is_refused_before_training(workspace, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    if not chattr("+i", locked):
        pytest.skip("chattr +i is not permitted here (it makes a folder unwritable even for root)")
    try:
        result = gen("train", "--data", workspace / "corpus.txt", "--out", locked / "run", *TINY)
        assert_one_line_error(result, "cannot be written", "choose another --out")
        assert "step 0" not in result.output  # refused before any training
    finally:
        chattr("-i", locked)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs to fill up."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs is not permitted here")
    yield mount_point
    # Lazily: the test process may still map a file there (safetensors loads by mmap).
    subprocess.run(["umount", "--lazy", str(mount_point)], capture_output=True)


def fill(disk, leave: int) -> None:
    """Fill `disk` until only `leave` bytes are free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"x" * (free - leave))


def test_a_full_disk_is_one_line_and_leaves_no_temporary_behind(workspace, tiny_disk):
    run = tiny_disk / "run"
    shutil.copytree(workspace / "run" / "latest", run / "latest")  # a run to resume, on the small disk
    fill(tiny_disk, leave=8192)  # room for neither an export nor a checkpoint
    result = gen("export", tiny_disk / "model.onnx", "--checkpoint", run, "--no-verify")
    assert_one_line_error(result, "cannot write", "No space left on device")
    result = gen("train", "--out", run, "--resume", "--max-iters", 12)
    assert_one_line_error(result, "cannot write", "nothing was changed there")
    assert sorted(path.name for path in tiny_disk.iterdir()) == ["filler", "run"]  # no temporary left
    assert sorted(path.name for path in run.iterdir()) == ["latest"]
    assert (run / "latest" / "model.safetensors").read_bytes() == \
        (workspace / "run" / "latest" / "model.safetensors").read_bytes()


# --- generation inputs ------------------------------------------------------------------


def test_a_stop_string_of_100000_characters_is_handled(workspace):
    generator = OnnxModel(workspace / "model.onnx")
    expected = generator.generate(["ROMEO:"], sampler="greedy", max_new_tokens=2000)[0]
    assert generator.generate(["ROMEO:"], sampler="greedy", max_new_tokens=2000, stop=["a" * 100_000]) == [expected]
    tail = expected[500:520]
    stopped = generator.generate(["ROMEO:"], sampler="greedy", max_new_tokens=2000, stop=["q" * 100_000, tail])[0]
    assert stopped == expected[:expected.find(tail)]


def test_generate_accepts_any_iterable_of_prompts(workspace):
    generator = OnnxModel(workspace / "model.onnx")
    prompts = ["ROMEO:", "JULIET:"]
    assert generator.generate((p for p in prompts), sampler="greedy", max_new_tokens=10) == \
        generator.generate(prompts, sampler="greedy", max_new_tokens=10)


def test_onnxruntime_prints_nothing_before_gens_one_line_error(workspace, tmp_path):
    """An export whose metadata claims a longer context than its graph has: onnxruntime's own
    error log (written straight to the terminal, beside Python) must not come before gen's line."""
    import json
    import sys

    import onnx

    model = onnx.load(str(workspace / "model.onnx"))
    for entry in model.metadata_props:
        if entry.key == "gen.model":
            document = json.loads(entry.value)
            document["block_size"] *= 4
            document["config"]["block_size"] *= 4
            entry.value = json.dumps(document)
    lying = tmp_path / "lying.onnx"
    onnx.save(model, str(lying))
    gen_binary = os.path.join(os.path.dirname(sys.executable), "gen")
    result = subprocess.run([gen_binary, "run", str(lying), "--max-new-tokens", "3"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "does not match its gen.model metadata" in result.stderr
