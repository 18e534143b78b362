"""Hostile or damaged files: each is refused in one line before anything is allocated
or run, and what was there before stays intact."""
import json

import numpy as np
import onnx
import pytest
from reliability_helpers import assert_one_line_error, gen

from gen.core import GenError
from gen.core.tokenizer import tokenizer_from_dict
from gen.runtime.onnx_model import OnnxModel

# --- a 1 KB file that describes terabytes ----------------------------------------------


def edit_json(path, edit):
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize("key, value, fragment", [
    ("n_layer", 10**9, "gpt n_layer must be from 1 to 1,024"),
    ("vocab_size", 10**12, "gpt vocab_size must be from 1 to 16,777,216"),
    ("n_embd", 2**22, "gpt n_embd must be from 1 to 65,536"),
    ("block_size", 10**12, "gpt block_size must be from 1 to 1,048,576"),
    ("n_embd", 2**16, "needs about"),  # within the bounds, but 1,024 layers of it: refused by its estimate
])
def test_a_config_that_describes_a_huge_model_is_refused_before_allocating(copy_of, key, value, fragment):
    run = copy_of("run")
    layers = {"n_layer": 1024} if fragment == "needs about" else {}
    edit_json(run / "best" / "config.json", lambda document: document["model"]["config"].update(
        {key: value, "n_head": 1, **layers}))
    message = assert_one_line_error(gen("sample", "--checkpoint", run, "--max-new-tokens", 5), fragment)
    if fragment == "needs about":
        assert "of memory, more than the" in message and "TB" in message


@pytest.mark.parametrize("option, value", [("--batch-size", "100000000"), ("--n-layer", "100000000")])
def test_a_huge_batch_or_model_on_the_command_line_is_refused(workspace, tmp_path, option, value):
    result = gen("train", "--data", workspace / "corpus.txt", "--out", tmp_path / "out", option, value)
    assert_one_line_error(result)
    assert not (tmp_path / "out").exists()


def test_a_bpe_tokenizer_whose_merges_double_a_token_41_times_is_refused():
    merges = [[97, 97]] + [[256 + i, 256 + i] for i in range(40)]
    with pytest.raises(GenError, match="makes a token of 131,072 bytes, more than the 65,536 allowed"):
        tokenizer_from_dict({"name": "bpe", "state": {"merges": merges}})


# --- an export whose metadata disagrees with its graph ----------------------------------


def with_metadata(source, target, **model_changes):
    proto = onnx.load(str(source))
    for entry in proto.metadata_props:
        if entry.key == "gen.model":
            model = json.loads(entry.value)
            model.update(model_changes)
            entry.value = json.dumps(model)
        if entry.key == "gen.tokenizer" and "tokenizer" in model_changes:
            entry.value = json.dumps(model_changes["tokenizer"])
    onnx.save(proto, str(target))
    return target


@pytest.mark.parametrize("changes, fragment", [
    ({"n_head": 4}, "has 2 heads of size 8, the metadata 4 of 8"),
    ({"head_size": 4}, "has 2 heads of size 8, the metadata 2 of 4"),
    ({"n_layer": 0}, "the graph also has past_key_values.0.key"),
    ({"n_layer": 2}, "the graph lacks past_key_values.1.key"),
    ({"block_size": 1000}, "a step at position 999 fails"),
    ({"vocab_size": 100}, "the graph's logits have"),
    ({"n_layer": 10**9}, "without a valid n_layer"),
    ({"block_size": 10**12}, "without a valid block_size"),
])
def test_metadata_that_disagrees_with_the_graph_is_one_line_before_anything_runs(workspace, tmp_path, changes,
                                                                                 fragment):
    altered = with_metadata(workspace / "model.onnx", tmp_path / "altered.onnx", **changes)
    result = gen("run", altered, "--max-new-tokens", 5, "--prompt", "ROMEO:")
    message = assert_one_line_error(result, fragment)
    assert "ROMEO:" not in result.output  # no text printed before the error
    assert "altered" in message or "export it again" in message


def test_a_tokenizer_larger_than_the_model_is_refused(workspace, tmp_path):
    bpe = {"name": "bpe", "state": {"merges": [[97, 98]]}}  # 257 tokens on a model of about 60
    proto = onnx.load(str(workspace / "model.onnx"))
    for entry in proto.metadata_props:
        if entry.key == "gen.tokenizer":
            entry.value = json.dumps(bpe)
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    assert_one_line_error(gen("run", tmp_path / "foreign.onnx", "--max-new-tokens", 5), "the tokenizer has 257 tokens")


@pytest.mark.parametrize("version", ["-1", "0", "two"])
def test_a_bad_format_version_is_refused(workspace, tmp_path, version):
    proto = onnx.load(str(workspace / "model.onnx"))
    for entry in proto.metadata_props:
        if entry.key == "gen.format":
            entry.value = version
    onnx.save(proto, str(tmp_path / "odd.onnx"))
    with pytest.raises(GenError, match="malformed gen.format"):
        OnnxModel(tmp_path / "odd.onnx")


# --- damaged resume state ---------------------------------------------------------------


def damage_state_json(value):
    return lambda run: (run / "latest" / "training_state.json").write_text(json.dumps(value))


def damage_tensors(extra):
    def damage(run):
        from safetensors.torch import load_file, save_file

        path = run / "latest" / "training_state.safetensors"
        tensors = load_file(str(path))
        tensors.update(extra())
        save_file(tensors, str(path))
    return damage


def rename_rng_tensor(run):
    from safetensors.torch import load_file, save_file

    path = run / "latest" / "training_state.safetensors"
    tensors = load_file(str(path))
    tensors["rng.torch"] = tensors["rng.torch"].float()
    save_file(tensors, str(path))


def torch_tensor(shape, dtype="float32"):
    import torch

    return torch.zeros(shape, dtype=getattr(torch, dtype))


@pytest.mark.parametrize("damage, fragment", [
    (damage_state_json([]), "damaged training state"),
    (damage_state_json({"param_groups": [], "state": {"abc": {}}}), "state entry 'abc'"),
    (damage_tensors(lambda: {"optimizer.x.y": torch_tensor(3)}), "unexpected tensor 'optimizer.x.y'"),
    (damage_tensors(lambda: {"optimizer.0.exp_avg": torch_tensor(3)}), "optimizer.0.exp_avg has shape (3,)"),
    (rename_rng_tensor, "unexpected tensor 'rng.torch'"),
    (lambda run: edit_json(run / "latest" / "config.json", lambda d: d["train_args"].update(lr="fast")),
     "training option lr='fast' is not a valid float"),
    (lambda run: (run / "latest" / "training_state.safetensors").write_bytes(b"\x00" * 10), "damaged training state"),
])
def test_damaged_resume_state_is_one_line_and_the_run_stays(copy_of, damage, fragment):
    run = copy_of("run")
    damage(run)
    before = sorted((path.name, path.stat().st_size) for path in (run / "latest").iterdir())
    assert_one_line_error(gen("train", "--out", run, "--resume", "--max-iters", 12), fragment)
    assert sorted((path.name, path.stat().st_size) for path in (run / "latest").iterdir()) == before


# --- a token cache file replaced by another .npy ----------------------------------------


@pytest.mark.parametrize("foreign_id", [10_000, 0], ids=["out-of-range", "in-range"])
def test_a_foreign_token_cache_is_encoded_again(workspace, tmp_path, monkeypatch, foreign_id):
    from gen.core import data

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    corpus = workspace / "corpus.txt"
    dataset = data.load_dataset(str(corpus), tokenizer_spec="char", progress=False)
    [cached] = (tmp_path / "cache" / "gen" / "tokens").glob("*.npy")
    # a cache of zeros has ids in range and the right shape: only its digest gives it away
    np.save(cached, np.full(len(dataset.train_ids) + len(dataset.val_ids), foreign_id, dtype=np.uint16))
    again = data.load_dataset(str(corpus), tokenizer_spec="char", progress=False)
    np.testing.assert_array_equal(again.train_ids, dataset.train_ids)
    np.testing.assert_array_equal(np.load(cached)[:len(dataset.train_ids)], dataset.train_ids)  # mended
