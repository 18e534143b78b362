"""The hooks a gen plugin can implement. Each receives a `register(name, obj)` callback."""
import pluggy

hookspec = pluggy.HookspecMarker("gen")
hookimpl = pluggy.HookimplMarker("gen")


@hookspec
def register_models(register):
    """Register model classes: register(name, cls_or_"module:attr", description=None)."""


@hookspec
def register_samplers(register):
    """Register sampler classes: register(name, cls), options are the __init__ keywords."""


@hookspec
def register_constraints(register):
    """Register constraint kinds: register(name, cls), built as cls(value, tokenizer, vocab_size)."""


@hookspec
def register_tokenizers(register):
    """Register tokenizer classes following gen.core.Tokenizer."""


@hookspec
def register_trackers(register):
    """Register experiment trackers following gen.core.tracking.Tracker: register(name, cls)."""


@hookspec
def register_commands(cli):
    """Add click commands to the `gen` command group."""


@hookspec
def on_train_start(config):
    """Called once before the first training step with the run's configuration dict."""


@hookspec
def on_eval(step, metrics):
    """Called after each evaluation; return True to stop training early."""


@hookspec
def on_checkpoint(step, path):
    """Called after a checkpoint directory has been written."""
