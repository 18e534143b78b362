"""Shell completion of plugin names in option values: `--sampler top<TAB>` -> top_k, top_p;
`--sampler top_k:<TAB>` -> top_k:k=. Completion is click's (see gen.core.cli's COMPLETE_VARIABLE);
the names come from the registry, so a third-party plugin's names complete as the built-ins' do."""
from __future__ import annotations


def complete_plugin_spec(kind: str):
    """A click `shell_complete` callback for an option whose value is a spec of a `kind` plugin
    ("sampler", "tokenizer", "model"): the registered names, then, after NAME:, its options."""

    def complete(ctx, parameter, incomplete: str):
        from click.shell_completion import CompletionItem

        from gen.core.errors import GenError
        from gen.core.registry import get_registry

        registry = get_registry()
        name, colon, _ = incomplete.partition(":")
        if not colon:
            return [CompletionItem(each, help=registry.entry(kind, each).description)
                    for each in registry.names(kind) if each.startswith(incomplete)]
        if name not in registry.names(kind):
            return []
        try:
            options = registry.entry(kind, name).options()
        except GenError:  # a plugin that cannot load here (a missing extra) completes no options
            return []
        candidates = [f"{name}:{option}=" for option in options]
        return [CompletionItem(candidate) for candidate in candidates if candidate.startswith(incomplete)]

    return complete
