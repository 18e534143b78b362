"""Built-in model plugins. Registered by path, so that registering and listing their names never
imports torch; showing a model's options imports its class."""
from gen.core import hookimpl


@hookimpl
def register_models(register):
    register("bigram", "gen.plugins.bigram:BigramLanguageModel",
             description="The classic bigram model: a vocab x vocab table of next-token logits.")
    register("gpt", "gen.plugins.gpt:GPT",
             description="A decoder-only transformer in the nanoGPT lineage, with a KV cache.")
