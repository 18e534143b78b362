"""The options of `gen train`, their limits, and where each value comes from (no torch).

`TrainConfig` is everything `gen train` takes; every checkpoint records it as
"train_args". It lives apart from the training loop so that the command line shows
the defaults without importing torch.

A value comes from, first to last: the command line, the `--config` TOML file, the
model's `training_defaults` (the bigram wants lr 0.1), and the defaults below. The
model itself is `--model NAME[:KEY=VALUE,...]`; `--block-size`, `--n-layer`, ...
are shortcuts for options of the same name of whichever model is chosen.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from gen.core.errors import GenError
from gen.core.specs import convert_options, options_of, parse_spec


@dataclass
class TrainConfig:
    """The quick recipe for a 2-core CPU, by default.

    With the gpt model's defaults that is nanoGPT's CPU model and batch (4 layers, 4
    heads, 128 wide, block 64, batch 12) with five times its learning rate, a short
    warmup and a cosine decay over 1,300 steps instead of 2,000. On Tiny Shakespeare
    (char tokens) it reaches an exact validation loss of about 1.85 in under 40 seconds
    on 2 idle CPU cores: 0.37x the time nanoGPT's recipe takes to its 1.90, measured
    side by side by benchmarks/time_to_loss.py.
    """

    # data
    data: str = "shakespeare"
    tokenizer: str = "char"  # NAME[:KEY=VALUE,...], e.g. bpe:vocab_size=512
    verify: bool = False  # read a token folder's shards in full against their sums before training
    # fine-tuning: a checkpoint whose weights, model and tokenizer the run starts from
    init_from: str | None = None
    # the model: NAME[:KEY=VALUE,...]; None below means "the model's own default"
    model: str = "gpt"
    block_size: int | None = None
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    dropout: float | None = None
    bias: bool | None = None
    # optimisation
    max_iters: int = 1300
    batch_size: int = 12
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 5e-3
    min_lr: float = 1e-4
    warmup_iters: int = 50
    lr_decay_iters: int | None = None  # the cosine reaches min_lr here; None: at max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 turns clipping off
    # evaluation and output
    eval_interval: int = 500
    eval_iters: int = 20
    log_interval: int = 10  # steps between training-loss lines, as nanoGPT's
    out: str = "out"
    resume: bool = False
    overwrite: bool = False
    # execution
    device: str = "auto"  # cpu | cuda | cuda:N | auto
    dtype: str = "auto"  # float32 | bfloat16 | auto (bfloat16 where the hardware has it)
    compile: bool = False
    seed: int = 1337


# Shortcuts for model options: --n-layer 6 means --model gpt:n_layer=6.
MODEL_SHORTCUTS = ("block_size", "n_layer", "n_head", "n_embd", "dropout", "bias")
# What a resumed run cannot change: the model, its data and its tokens.
FIXED_ON_RESUME = ("data", "tokenizer", "model", "init_from") + MODEL_SHORTCUTS
# The model options a fine-tune (--init-from) may change without changing the model's
# weights; a smaller block_size is allowed too where the model can crop its positions.
CHANGEABLE_ON_FINE_TUNE = ("dropout",)
# What saying --resume or --overwrite on the command line does not store in a checkpoint.
NOT_SAVED = ("resume", "overwrite", "verify")
DTYPES = ("auto", "float32", "bfloat16")

# The range of every numeric training option, (lowest, highest) with None for no
# bound. The command line, the config file and a resumed run's saved options are
# all checked against this one table. (Model options are checked by the model.)
LIMITS = {
    "max_iters": (1, None),
    "batch_size": (1, None),
    "grad_accum": (1, None),
    "lr": (0.0, None),
    "min_lr": (0.0, None),
    "warmup_iters": (0, None),
    "lr_decay_iters": (1, None),
    "weight_decay": (0.0, None),
    "beta1": (0.0, 1.0),
    "beta2": (0.0, 1.0),
    "grad_clip": (0.0, None),
    "eval_interval": (1, None),
    "eval_iters": (1, None),
    "log_interval": (1, None),
    "seed": (0, 2**63 - 2),  # torch's generators take 64-bit seeds; evaluation uses seed + 1
}


def option_flag(name: str) -> str:
    """The command-line spelling of an option: max_iters -> --max-iters."""
    return "--" + name.replace("_", "-")


def train_config_from_dict(values: dict, source: str) -> TrainConfig:
    """A TrainConfig from saved values (a checkpoint's train_args), checking names and types."""
    if not isinstance(values, dict):
        raise GenError(f"{source} has damaged training options (not a JSON object)")
    options = options_of(TrainConfig)
    unknown = sorted(set(values) - set(options))
    if unknown:
        raise GenError(f"{source} has unknown training option(s): {', '.join(unknown)}")
    checked = {}
    for key, value in values.items():
        if value is None and options[key].default is None:  # "the model's default", "at max_iters"
            checked[key] = None
        else:
            checked.update(convert_options({key: value}, {key: options[key]}, f"{source}: training"))
    return TrainConfig(**checked)


def check_config(config: TrainConfig) -> None:
    """Reject values no run can use, before anything is read or written."""
    for name, (lowest, highest) in LIMITS.items():
        value = getattr(config, name)
        if value is None:
            continue
        if not math.isfinite(value) or (lowest is not None and value < lowest) or (highest is not None and value > highest):
            bounds = f"at least {lowest}" if highest is None else f"from {lowest} to {highest}"
            raise GenError(f"{option_flag(name)} must be {bounds}, got {value}")
    if config.min_lr > config.lr:
        raise GenError(f"--min-lr ({config.min_lr}) is above --lr ({config.lr})")
    if config.lr_decay_iters is not None and config.lr_decay_iters <= config.warmup_iters:
        raise GenError(
            f"--lr-decay-iters ({config.lr_decay_iters}) must come after --warmup-iters ({config.warmup_iters})"
        )
    if config.dtype not in DTYPES:
        raise GenError(f"--dtype must be {', '.join(DTYPES)}, got {config.dtype!r}")


def given_options(config: TrainConfig) -> set[str]:
    """The options of `config` that differ from the defaults: what a caller of the
    Python API gave, when it does not say (the command line knows exactly)."""
    return {
        field.name for field in dataclasses.fields(TrainConfig)
        if getattr(config, field.name) != field.default
    }


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup to lr, then a cosine decay to min_lr at lr_decay_iters (then flat)."""
    decay_iters = config.lr_decay_iters or config.max_iters
    if step < config.warmup_iters:
        return config.lr * (step + 1) / (config.warmup_iters + 1)
    if step >= decay_iters:
        return config.min_lr
    progress = (step - config.warmup_iters) / (decay_iters - config.warmup_iters)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


def model_spec(config: TrainConfig) -> tuple[str, dict]:
    """The model's name and the options the user gave it, from --model and the shortcuts.

    Values are typed and checked against the model's options (its Config's fields).
    """
    from gen.core.registry import get_registry

    name, text_options = parse_spec(config.model, "model")
    entry = get_registry().entry("model", name)
    accepted = entry.options()
    options = convert_options(text_options, accepted, f"model {name!r}")
    for shortcut in MODEL_SHORTCUTS:
        value = getattr(config, shortcut)
        if value is None:
            continue
        if shortcut not in accepted:
            takes = ", ".join(accepted) or "nothing"
            raise GenError(f"model {name!r} takes no {option_flag(shortcut)}; its options are: {takes}")
        [value] = convert_options({shortcut: value}, accepted, f"model {name!r}").values()
        if shortcut in options and options[shortcut] != value:
            raise GenError(
                f"{option_flag(shortcut)} {value} contradicts --model {config.model!r}; give the option once"
            )
        options[shortcut] = value
    return name, options


def with_model_defaults(config: TrainConfig, given: set[str]) -> TrainConfig:
    """`config` with the model's training_defaults for the options that were not given."""
    from gen.core.registry import get_registry

    name, _ = parse_spec(config.model, "model")
    defaults = getattr(get_registry().get("model", name), "training_defaults", None) or {}
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(defaults) - fields)
    if unknown:
        raise GenError(f"model {name!r} declares training_defaults for unknown options: {', '.join(unknown)}")
    typed = vars(train_config_from_dict(defaults, f"model {name!r}'s training_defaults"))  # checked like saved options
    return dataclasses.replace(config, **{key: typed[key] for key in defaults if key not in given})

