"""A gen plugin adding `mlp`: an MLP language model over the last few tokens (Bengio et al., 2003).

This module is what gen imports at startup, in every environment, so it must not
import torch: a runtime-only install (`gen run model.onnx`, no torch) loads it too.
The model is registered by "module:attribute" path, and gen imports `gen_mlp.model`
(and with it torch) only when the model is used or its options are listed.
"""
from gen.core import hookimpl


@hookimpl
def register_models(register):
    register("mlp", "gen_mlp.model:MLP",
             description="An MLP over the last few tokens' embeddings (Bengio et al., 2003).")
