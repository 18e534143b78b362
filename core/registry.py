"""The plugins: the pluggy manager, what the plugins registered, and the ones that failed.

Built-in plugins are modules registered exactly like third-party ones; third-party
plugins come from the `gen` entry-point group of installed distributions. The
`GEN_PLUGINS` environment variable (comma-separated distribution names) is an
allowlist for third-party plugins; built-ins always load.

All of it lives in one `Plugins` object, built on first use by `get_plugins()` and
kept for the life of the process (`reset_plugins()` forgets it, for tests).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import math
import os
import re
from dataclasses import dataclass

import pluggy

from gen.core import hookspecs
from gen.core.errors import GenError
from gen.core.specs import BUILTIN_PROVIDER, REQUIRED, Option, options_of

BUILTIN_PLUGINS = (
    "gen.plugins.tokenizers",
    "gen.plugins.hf_tokenizers",
    "gen.plugins.samplers",
    "gen.plugins.constraints",
    "gen.plugins.models",
    "gen.plugins.trackers",
    "gen.core.cli.commands",
    "gen.core.cli.tools",
    "gen.core.cli.export_commands",
    "gen.core.cli.runtime_commands",
)
KINDS = ("model", "sampler", "tokenizer", "constraint", "tracker")
_HOOK_OF_KIND = {
    "model": "register_models",
    "sampler": "register_samplers",
    "tokenizer": "register_tokenizers",
    "constraint": "register_constraints",
    "tracker": "register_trackers",
}


@dataclass
class PluginEntry:
    """One registered model, sampler, tokenizer or constraint kind."""

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

    def options(self) -> dict[str, Option]:
        """The options a spec may give (see gen.core.specs for where each kind keeps them)."""
        target = self.load()
        if self.kind in ("sampler", "tracker"):  # the __init__ keywords
            return options_of(target)
        if self.kind == "tokenizer":
            return options_of(target.train, skip=("text",))
        if self.kind == "constraint":  # its one value is the pattern, schema or grammar itself
            return {}
        from gen.core.model import model_options

        return model_options(target)

    def options_json(self) -> dict[str, dict]:
        """The options as JSON, {name: {"type": "float", "default": 0.9}} (default None when
        required), as `gen plugins --json` and `GET /v1/samplers` show them. A default of inf or
        nan, which JSON cannot hold, is the string "inf" or "nan"."""
        return {name: {"type": option.type.__name__, "default": _default_as_json(option.default)}
                for name, option in self.options().items()}

    def options_text(self) -> str:
        """The options as `name (type=default), ...` ("" if none), as `gen plugins` and `gen train
        --help` list them; a model whose module cannot be imported here (torch missing in a
        runtime-only install) says why instead."""
        try:
            return ", ".join(option.describe() for option in self.options().values())
        except GenError as error:
            return f"(unavailable: {error})"


def _default_as_json(default):
    if default is REQUIRED:
        return None
    if isinstance(default, float) and not math.isfinite(default):
        return str(default)
    return default


@dataclass
class FailedPlugin:
    """A plugin that could not be imported, or whose hook raised; the others keep working."""

    name: str
    provider: str
    error: str


class Registry:
    """Everything the loaded plugins registered, looked up by kind and name."""

    def __init__(self):
        self.entries: dict[tuple[str, str], PluginEntry] = {}

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

    def add(self, entry: PluginEntry) -> None:
        existing = self.entries.get((entry.kind, entry.name))
        if existing is not None:
            raise GenError(
                f"{entry.kind} {entry.name!r} is registered twice: by {existing.provider} and by "
                f"{entry.provider}; uninstall one of them or limit plugins with GEN_PLUGINS"
            )
        self.entries[(entry.kind, entry.name)] = entry


def _description(target, given: str | None) -> str:
    if given:
        return given
    if isinstance(target, str):
        return ""
    doc = (getattr(target, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


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


class Plugins:
    """The plugin manager with the built-in and installed plugins, and what they registered."""

    def __init__(self):
        self.manager = pluggy.PluginManager("gen")
        self.manager.add_hookspecs(hookspecs)
        self.failures: list[FailedPlugin] = []
        self._providers: dict[str, str] = {}  # plugin name in the manager -> distribution
        self._registry: Registry | None = None
        for module_name in BUILTIN_PLUGINS:
            self.register(importlib.import_module(module_name), module_name, BUILTIN_PROVIDER)
        self._load_entry_points()

    def _load_entry_points(self) -> None:
        allowed = _allowed_distributions()
        for entry_point in importlib.metadata.entry_points(group="gen"):
            distribution = entry_point.dist.name if entry_point.dist else "unknown"
            if allowed is not None and _normalized(distribution) not in allowed:
                continue
            # Named by distribution too, so two packages may use the same entry-point name.
            plugin_name = f"{distribution}:{entry_point.name}"
            if self.manager.get_plugin(plugin_name) is not None:
                continue
            try:
                plugin = entry_point.load()
                if self.manager.is_registered(plugin):  # listed twice (e.g. a stale editable install)
                    continue
                self.register(plugin, plugin_name, distribution)
            except Exception as error:  # a broken plugin must not take the others down
                self._record_failure(FailedPlugin(entry_point.name, distribution, _one_line(error)))

    def register(self, plugin, name: str, provider: str | None = None) -> None:
        """Add a plugin (a module or any object with @hookimpl functions); tests use it in-process."""
        self.manager.register(plugin, name=name)
        self._providers[name] = provider or name
        self._registry = None  # what is registered changed

    def unregister(self, plugin) -> None:
        self.manager.unregister(plugin)
        self._registry = None

    def is_registered(self, plugin) -> bool:
        return self.manager.is_registered(plugin)

    def _record_failure(self, failure: FailedPlugin) -> None:
        if failure not in self.failures:
            self.failures.append(failure)

    def _hook_failed(self, plugin_name: str, error: Exception) -> None:
        provider = self._providers.get(plugin_name, plugin_name)
        self._record_failure(FailedPlugin(plugin_name, provider, _one_line(error)))

    @property
    def registry(self) -> Registry:
        """What every plugin's register hooks registered, collected once.

        Each plugin's hook is called on its own so that every entry knows its provider,
        a name registered twice can name both, and a hook that raises is reported
        while the others still count.
        """
        if self._registry is not None:
            return self._registry
        registry = Registry()
        for kind in KINDS:
            hook = getattr(self.manager.hook, _HOOK_OF_KIND[kind])
            for implementation in hook.get_hookimpls():  # registration order: built-ins first
                provider = self._providers.get(implementation.plugin_name, implementation.plugin_name)

                def register(name, target, description=None, kind=kind, provider=provider):
                    if not isinstance(name, str) or not name:
                        raise GenError(f"{provider} registered a {kind} with an invalid name {name!r}")
                    registry.add(PluginEntry(kind, name, target, provider, _description(target, description)))

                try:
                    implementation.function(register=register)
                except GenError:
                    raise
                except Exception as error:  # report a plugin whose hook breaks; keep the rest
                    self._hook_failed(implementation.plugin_name, error)
        self._registry = registry
        return registry

    def add_commands(self, cli) -> None:
        """Call every plugin's register_commands(cli), each on its own, reporting those that raise."""
        for implementation in self.manager.hook.register_commands.get_hookimpls():
            try:
                implementation.function(cli=cli)
            except Exception as error:
                self._hook_failed(implementation.plugin_name, error)

    def warnings(self) -> list[str]:
        """One line per plugin that failed to import or whose register hook raised."""
        self.registry  # calling the register hooks records the ones that raise
        return [
            f"Warning: plugin {failure.name!r} from {failure.provider} failed to load "
            f"({failure.error}); the other plugins still work"
            for failure in self.failures
        ]

    def call_hook(self, name: str, **kwargs) -> list:
        """Call a notification hook (on_eval, ...) on every plugin; returns their results."""
        return getattr(self.manager.hook, name)(**kwargs)


_plugins: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugins, loaded on first use."""
    global _plugins
    if _plugins is None:
        _plugins = Plugins()
    return _plugins


def reset_plugins() -> None:
    """Forget the loaded plugins (tests use it after changing GEN_PLUGINS or installing)."""
    global _plugins
    _plugins = None


def get_registry() -> Registry:
    """What the plugins registered: models, samplers and tokenizers by name."""
    return get_plugins().registry
