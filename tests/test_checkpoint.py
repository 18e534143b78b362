"""Checkpoint directories: round trips, tied weights, exact optimizer and RNG state,
atomic replacement, and one-line errors for missing, damaged or foreign checkpoints."""
import json

import pytest
import torch

from gen.core.training import checkpoint as ckpt
from gen.core.errors import GenError
from gen.core.registry import get_registry
from gen.core.tokenizer import tokenizer_to_dict

TEXT = "hello world, hello gen\n"


@pytest.fixture
def tokenizer():
    return get_registry().get("tokenizer", "char").train(TEXT)


def small_gpt(vocab_size: int, **options):
    torch.manual_seed(0)
    config = dict(vocab_size=vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)
    config.update(options)
    return get_registry().get("model", "gpt").from_config(config)


def write(path, model, tokenizer, **extra):
    return ckpt.save_checkpoint(
        path, model=model, model_name="gpt", tokenizer_document=tokenizer_to_dict("char", tokenizer),
        train_args={"data": "corpus.txt", "lr": 0.001}, step=7, best_val_loss=2.5, **extra,
    )


def test_round_trip_keeps_weights_tied_and_everything_recorded(tmp_path, tokenizer):
    model = small_gpt(tokenizer.vocab_size)
    write(tmp_path / "run", model, tokenizer)
    loaded = ckpt.load_checkpoint(tmp_path / "run")
    assert not loaded.model.training
    assert (loaded.model_name, loaded.step, loaded.best_val_loss) == ("gpt", 7, 2.5)
    assert loaded.model_config == model.config_dict()
    assert loaded.train_args == {"data": "corpus.txt", "lr": 0.001}
    assert loaded.tokenizer_document == {"name": "char", "state": tokenizer.to_dict()}
    assert loaded.tokenizer.encode("hello") == tokenizer.encode("hello")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    # The tie survives: one tensor shared by the embedding and the output head.
    assert loaded.model.lm_head.weight.data_ptr() == loaded.model.transformer.wte.weight.data_ptr()


def test_a_gpt_checkpoint_from_before_the_activation_option_loads_as_the_exact_gelu(tmp_path, tokenizer):
    model = small_gpt(tokenizer.vocab_size).eval()
    write(tmp_path / "run", model, tokenizer)
    config_file = tmp_path / "run" / ckpt.CONFIG_FILE
    document = json.loads(config_file.read_text())
    del document["model"]["config"]["activation"]  # as gen wrote it before the option existed
    config_file.write_text(json.dumps(document))
    loaded = ckpt.load_checkpoint(tmp_path / "run")
    assert loaded.model.config.activation == "gelu" and loaded.model.transformer.h[0].mlp.gelu.approximate == "none"
    ids = torch.randint(tokenizer.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.model(ids)[0], model(ids)[0])


def test_optimizer_and_rng_states_come_back_bit_for_bit(tmp_path, tokenizer):
    model = small_gpt(tokenizer.vocab_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), fused=True)
    ids = torch.randint(tokenizer.vocab_size, (2, 8))
    for _ in range(3):
        _, loss = model(ids, ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    generator = torch.Generator().manual_seed(5)
    torch_state = torch.get_rng_state()
    write(tmp_path / "run", model, tokenizer, optimizer=optimizer,
          rng_states={"torch": torch_state, "batches": generator.get_state()})

    loaded = ckpt.load_checkpoint(tmp_path / "run")
    fresh = torch.optim.AdamW(loaded.model.parameters(), lr=5.0, fused=True)
    states = ckpt.load_training_state(tmp_path / "run", fresh)
    assert torch.equal(states["batches"], generator.get_state())
    assert torch.equal(states["torch"], torch_state)  # (loading drew from the global RNG since)
    assert fresh.param_groups[0]["lr"] == 1e-3 and fresh.param_groups[0]["betas"] == (0.9, 0.99)
    saved, restored = optimizer.state_dict()["state"], fresh.state_dict()["state"]
    assert saved.keys() == restored.keys()
    for index in saved:
        for key in saved[index]:
            assert torch.equal(saved[index][key], restored[index][key]), (index, key)


def test_rewriting_replaces_the_old_directory_whole(tmp_path, tokenizer):
    write(tmp_path / "run", small_gpt(tokenizer.vocab_size), tokenizer)
    (tmp_path / "run" / "stray.txt").write_text("from before")
    write(tmp_path / "run", small_gpt(tokenizer.vocab_size), tokenizer)
    assert not (tmp_path / "run" / "stray.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary siblings left


def test_a_failed_write_keeps_the_old_checkpoint(tmp_path, tokenizer):
    model = small_gpt(tokenizer.vocab_size)
    write(tmp_path / "run", model, tokenizer)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}

    class NotAModel(torch.nn.Module):  # fails half way: config.json is written, weights are not
        def config_dict(self):
            return {}

        def state_dict(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write(tmp_path / "run", NotAModel(), tokenizer)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_crash_between_the_two_renames_loses_nothing(tmp_path, tokenizer):
    write(tmp_path / "out" / "best", small_gpt(tokenizer.vocab_size), tokenizer)
    before = (tmp_path / "out" / "best" / "model.safetensors").read_bytes()
    # The old directory was moved aside, and the process died before the new one moved in.
    (tmp_path / "out" / "best").rename(tmp_path / "out" / ".best.old-1a2b3c4d")
    loaded = ckpt.load_checkpoint(tmp_path / "out")
    assert loaded.path == tmp_path / "out" / "best"
    assert (tmp_path / "out" / "best" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["best"]


def test_a_run_directory_resolves_to_its_best_checkpoint(tmp_path, tokenizer):
    write(tmp_path / "out" / "latest", small_gpt(tokenizer.vocab_size), tokenizer)
    assert ckpt.resolve_checkpoint(tmp_path / "out") == tmp_path / "out" / "latest"
    write(tmp_path / "out" / "best", small_gpt(tokenizer.vocab_size), tokenizer)
    assert ckpt.resolve_checkpoint(tmp_path / "out") == tmp_path / "out" / "best"
    assert ckpt.load_checkpoint(tmp_path / "out").path == tmp_path / "out" / "best"


def assert_one_line_error(path, *fragments):
    with pytest.raises(GenError) as error:
        ckpt.load_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(tmp_path / "nowhere", "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(tmp_path / "empty", "no checkpoint", "config.json")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_damaged_weights(tmp_path, tokenizer, damage):
    write(tmp_path / "run", small_gpt(tokenizer.vocab_size), tokenizer)
    weights = tmp_path / "run" / "model.safetensors"
    if damage == "garbage":
        weights.write_bytes(b"\x00\xffnot safetensors at all" * 10)
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        weights.unlink()
    assert_one_line_error(tmp_path / "run", "model.safetensors")


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": "gen.checkpoint", "format_version": 1}'])
def test_damaged_config(tmp_path, tokenizer, content):
    write(tmp_path / "run", small_gpt(tokenizer.vocab_size), tokenizer)
    (tmp_path / "run" / "config.json").write_text(content)
    assert_one_line_error(tmp_path / "run", "damaged", "config.json")


def edit_config(path, change):
    config = json.loads((path / "config.json").read_text())
    change(config)
    (path / "config.json").write_text(json.dumps(config))


def test_unknown_model_plugin(tmp_path, tokenizer):
    write(tmp_path / "run", small_gpt(tokenizer.vocab_size), tokenizer)
    edit_config(tmp_path / "run", lambda config: config["model"].update(name="transformer-xl"))
    assert_one_line_error(tmp_path / "run", "unknown model 'transformer-xl'", "gpt")


def test_weights_that_do_not_fit_the_config(tmp_path, tokenizer):
    write(tmp_path / "run", small_gpt(tokenizer.vocab_size), tokenizer)
    edit_config(tmp_path / "run", lambda config: config["model"]["config"].update(n_embd=32))
    assert_one_line_error(tmp_path / "run", "do not fit")


def test_newer_format_version(tmp_path, tokenizer):
    write(tmp_path / "run", small_gpt(tokenizer.vocab_size), tokenizer)
    edit_config(tmp_path / "run", lambda config: config.update(format_version=99))
    assert_one_line_error(tmp_path / "run", "format version 99", "upgrade")


def test_training_state_is_needed_to_resume(tmp_path, tokenizer):
    model = small_gpt(tokenizer.vocab_size)
    write(tmp_path / "run", model, tokenizer)  # weights only
    with pytest.raises(GenError, match="no training state"):
        ckpt.load_training_state(tmp_path / "run", torch.optim.AdamW(model.parameters()))
