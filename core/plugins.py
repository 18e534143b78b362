"""The plugin manager and the registry of models, samplers and tokenizers.

Built-in plugins are modules registered exactly like third-party ones; third-party
plugins come from the `gen` entry-point group of installed distributions. The
`GEN_PLUGINS` environment variable (comma-separated distribution names) is an
allowlist for third-party plugins; built-ins always load.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import re

from dataclasses import dataclass, field

import pluggy

from gen.core import hookspecs
from gen.core.errors import GenError

BUILTIN_PROVIDER = "gen"
BUILTIN_PLUGINS = (
    "gen.plugins.tokenizers",
    "gen.plugins.samplers",
    "gen.plugins.models",
)
KINDS = ("model", "sampler", "tokenizer")
_HOOK_OF_KIND = {
    "model": "register_models",
    "sampler": "register_samplers",
    "tokenizer": "register_tokenizers",
}


@dataclass
class PluginEntry:
    """One registered model, sampler or tokenizer."""

    kind: str
    name: str
    target: object  # the class, or a "module:attribute" string imported on first use
    provider: str  # the distribution (or in-process plugin name) that registered it
    description: str = ""

    def load(self):
        """The registered object, importing it now if it was registered by path."""
        if not isinstance(self.target, str):
            return self.target
        module_name, _, attribute = self.target.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attribute)
        except ImportError as error:
            raise GenError(
                f"{self.kind} {self.name!r} from {self.provider} needs a module that is not "
                f"installed ({error}); install the training extra: pip install 'gen[train]'"
            ) from None


@dataclass
class FailedPlugin:
    """A plugin module that could not be imported; the others keep working."""

    name: str
    provider: str
    error: str


@dataclass
class Registry:
    """Everything the loaded plugins registered, looked up by kind and name."""

    entries: dict[tuple[str, str], PluginEntry] = field(default_factory=dict)
    failures: list[FailedPlugin] = field(default_factory=list)

    def names(self, kind: str) -> list[str]:
        return sorted(name for entry_kind, name in self.entries if entry_kind == kind)

    def entry(self, kind: str, name: str) -> PluginEntry:
        try:
            return self.entries[(kind, name)]
        except KeyError:
            known = ", ".join(self.names(kind)) or "none"
            raise GenError(f"unknown {kind} {name!r}; known {kind}s: {known}") from None

    def get(self, kind: str, name: str):
        """The registered class (or factory) for `name`."""
        return self.entry(kind, name).load()


def _description(target, given: str | None) -> str:
    if given:
        return given
    if isinstance(target, str):
        return ""
    doc = (getattr(target, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


_plugin_manager: pluggy.PluginManager | None = None
_failures: list[FailedPlugin] = []
_providers: dict[str, str] = {}  # plugin name in the manager -> distribution name


def _normalized(distribution: str) -> str:
    # PEP 503: gen-typical, gen_typical and Gen.Typical name the same distribution.
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _one_line(error: Exception) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]


def _allowed_distributions() -> set[str] | None:
    value = os.environ.get("GEN_PLUGINS")
    if value is None:
        return None
    return {_normalized(name.strip()) for name in value.split(",") if name.strip()}


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with built-in and installed plugins loaded."""
    global _plugin_manager
    if _plugin_manager is not None:
        return _plugin_manager
    manager = pluggy.PluginManager("gen")
    manager.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
        _providers[module_name] = BUILTIN_PROVIDER
    allowed = _allowed_distributions()
    for entry_point in importlib.metadata.entry_points(group="gen"):
        distribution = entry_point.dist.name if entry_point.dist else "unknown"
        if allowed is not None and _normalized(distribution) not in allowed:
            continue
        # Named by distribution too, so two packages may use the same entry-point name.
        plugin_name = f"{distribution}:{entry_point.name}"
        if manager.get_plugin(plugin_name) is not None:
            continue
        try:
            plugin = entry_point.load()
            if manager.is_registered(plugin):  # listed twice (e.g. a stale editable install)
                continue
            manager.register(plugin, name=plugin_name)
        except Exception as error:  # a broken plugin must not take the others down
            _failures.append(FailedPlugin(entry_point.name, distribution, _one_line(error)))
            continue
        _providers[plugin_name] = distribution
    _plugin_manager = manager
    return manager


def reset_plugins() -> None:
    """Forget the loaded plugins (tests use it after changing GEN_PLUGINS or installing)."""
    global _plugin_manager
    _plugin_manager = None
    _failures.clear()
    _providers.clear()


def provider_of(plugin_name: str) -> str:
    return _providers.get(plugin_name, plugin_name)


def get_registry() -> Registry:
    """Call every plugin's register hooks and collect what they register.

    Each plugin's hook is called on its own so that every entry knows its provider,
    and a name registered twice can name both.
    """
    manager = get_plugin_manager()
    registry = Registry(failures=list(_failures))
    for kind in KINDS:
        hook = getattr(manager.hook, _HOOK_OF_KIND[kind])
        for implementation in hook.get_hookimpls():  # registration order: built-ins first
            provider = provider_of(implementation.plugin_name)

            def register(name, target, description=None, kind=kind, provider=provider):
                if not isinstance(name, str) or not name:
                    raise GenError(f"{provider} registered a {kind} with an invalid name {name!r}")
                existing = registry.entries.get((kind, name))
                if existing is not None:
                    raise GenError(
                        f"{kind} {name!r} is registered twice: by {existing.provider} and by "
                        f"{provider}; uninstall one of them or limit plugins with GEN_PLUGINS"
                    )
                registry.entries[(kind, name)] = PluginEntry(
                    kind, name, target, provider, _description(target, description)
                )

            try:
                implementation.function(register=register)
            except GenError:
                raise
            except Exception as error:  # report a plugin whose hook breaks; keep the rest
                failure = record_failure(implementation.plugin_name, error)
                if failure not in registry.failures:
                    registry.failures.append(failure)
    return registry


def record_failure(plugin_name: str, error: Exception) -> FailedPlugin:
    """Remember a plugin whose hook raised, to report it like one that failed to import."""
    failure = FailedPlugin(plugin_name, provider_of(plugin_name), _one_line(error))
    if failure not in _failures:
        _failures.append(failure)
    return failure


def plugin_warnings() -> list[str]:
    """One line per plugin that failed to import or whose register hook raised."""
    get_registry()  # calling the register hooks records the ones that raise
    return [
        f"Warning: plugin {failure.name!r} from {failure.provider} failed to load "
        f"({failure.error}); the other plugins still work"
        for failure in _failures
    ]


def call_hook(name: str, **kwargs) -> list:
    """Call a notification hook (on_eval, ...) on every plugin; returns their results."""
    return getattr(get_plugin_manager().hook, name)(**kwargs)
