"""The built-in commands besides `plugins`: train, sample, eval, export, run.

Each imports its heavy machinery inside the function so that `gen --help` and
`gen run` never import torch.
"""
COMMANDS = []
