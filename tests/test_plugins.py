"""Plugin loading and `gen plugins`: in-process plugins, installed distributions,
broken plugins, the GEN_PLUGINS allowlist, the example package and the torch line."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from gen.core import GenError, hookimpl
from gen.core.cli import cli
from gen.core.registry import get_plugins, get_registry, reset_plugins
from gen.core.sampling import build_sampler_chain

REPOSITORY = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN = REPOSITORY / "examples" / "gen-typical"
GEN_SCRIPT = Path(sys.executable).parent / "gen"


class FirstToken:
    """Always pick token 0 (a sampler for these tests)."""

    def __call__(self, logits, rng):
        return np.zeros(len(logits), dtype=np.int64)


class FirstTokenPlugin:
    @hookimpl
    def register_samplers(self, register):
        register("first_token", FirstToken)


class SecondGreedyPlugin:
    @hookimpl
    def register_samplers(self, register):
        register("greedy", FirstToken)


def invoke_gen(*arguments):
    return CliRunner().invoke(cli, list(arguments))


def table_rows(output: str) -> list[list[str]]:
    """The KIND, NAME and PROVIDER cells of each `gen plugins` row (not the indented options lines)."""
    return [line.split()[:3] for line in output.splitlines()[1:]
            if not line.startswith(("failed:", " "))]


def environment_without_allowlist() -> dict:
    return {name: value for name, value in os.environ.items() if name != "GEN_PLUGINS"}


# --- in-process plugins -----------------------------------------------------------


def test_gen_plugins_lists_an_in_process_plugin_with_its_provider(fresh_plugins):
    get_plugins().register(FirstTokenPlugin(), "first-token-plugin")

    result = invoke_gen("plugins")

    assert result.exit_code == 0, result.output
    assert ["sampler", "first_token", "first-token-plugin"] in table_rows(result.output)
    assert ["sampler", "greedy", "gen"] in table_rows(result.output)
    assert "Always pick token 0" in result.output
    ids = build_sampler_chain(["first_token"])(np.ones((3, 4), dtype=np.float32), np.random.default_rng(0))
    np.testing.assert_array_equal(ids, [0, 0, 0])


def test_gen_plugins_json_parses(fresh_plugins):
    get_plugins().register(FirstTokenPlugin(), "first-token-plugin")

    result = invoke_gen("plugins", "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    samplers = {row["name"]: row for row in document["plugins"] if row["kind"] == "sampler"}
    assert samplers["first_token"]["provider"] == "first-token-plugin"
    assert samplers["first_token"]["description"] == "Always pick token 0 (a sampler for these tests)."
    assert {"greedy", "multinomial", "temperature", "top_k", "top_p", "min_p"} <= set(samplers)
    assert all(samplers[name]["provider"] == "gen" for name in ("greedy", "top_p"))
    assert isinstance(document["failed"], list)
    assert samplers["top_k"]["options"] == {"k": {"type": "int", "default": 40}}
    models = {row["name"]: row for row in document["plugins"] if row["kind"] == "model"}
    assert models["gpt"]["options"]["n_layer"] == {"type": "int", "default": 4}
    assert "vocab_size" not in models["gpt"]["options"]  # set from the tokenizer, not by the user


def test_gen_plugins_shows_each_plugins_options_under_it(fresh_plugins):
    lines = invoke_gen("plugins").output.splitlines()
    options_of = {line.split()[1]: lines[index + 1].strip() for index, line in enumerate(lines[1:], 1)
                  if not line.startswith((" ", "failed:"))}
    assert options_of["top_k"] == "options: k (int=40)"
    assert options_of["greedy"] == "options: none"
    assert options_of["bpe"] == "options: vocab_size (int=512)"
    assert options_of["bigram"] == "options: block_size (int=64)"


def test_a_name_registered_twice_is_a_one_line_error_naming_both_providers(fresh_plugins):
    get_plugins().register(SecondGreedyPlugin(), "second-greedy-plugin")

    result = invoke_gen("plugins")

    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "sampler 'greedy' is registered twice: by gen and by second-greedy-plugin" in result.output
    with pytest.raises(GenError, match="registered twice"):
        build_sampler_chain(["greedy"])


# --- installed distributions, built on disk ---------------------------------------


class BrokenHookPlugin:
    @hookimpl
    def register_samplers(self, register):
        raise RuntimeError("this plugin's hook is broken")


def test_a_plugin_whose_hook_raises_is_reported_and_the_others_keep_working(fresh_plugins):
    get_plugins().register(BrokenHookPlugin(), "broken-hook-plugin")
    result = invoke_gen("plugins")
    assert result.exit_code == 0, result.output
    assert "failed: broken-hook-plugin" in result.output
    assert "this plugin's hook is broken" in result.output
    assert ["sampler", "greedy", "gen"] in table_rows(result.output)


def test_a_broken_register_hook_is_a_one_line_warning_in_other_commands(fresh_plugins):
    get_plugins().register(BrokenHookPlugin(), "broken-hook-plugin")
    result = invoke_gen("run", "--help")
    assert result.exit_code == 0, result.output
    assert "Warning: plugin 'broken-hook-plugin'" in result.output
    assert "Traceback" not in result.output


class BrokenCommandsPlugin:
    @hookimpl
    def register_commands(self, cli):
        raise RuntimeError("no commands today")


class HelloCommandPlugin:
    @hookimpl
    def register_commands(self, cli):
        @cli.command(name="hello-from-plugin")
        def hello():
            """Say hello (a command for these tests)."""
            click.echo("hello")


def test_a_broken_register_commands_is_reported_and_other_plugins_commands_arrive(fresh_plugins):
    from gen.core import cli as cli_module

    plugins = get_plugins()
    plugins.register(BrokenCommandsPlugin(), "broken-commands")
    plugins.register(HelloCommandPlugin(), "hello-commands")
    plugins.add_commands(cli_module.cli)
    try:
        result = invoke_gen("hello-from-plugin")
        assert result.exit_code == 0, result.output
        assert "hello" in result.output
        assert "Warning: plugin 'broken-commands'" in result.output
        assert "no commands today" in result.output
    finally:
        cli.commands.pop("hello-from-plugin", None)


@pytest.fixture
def site_directory(tmp_path, monkeypatch):
    """A directory on sys.path where a test installs distributions by hand: a module
    and a .dist-info with METADATA and entry_points.txt, which is all that
    importlib.metadata (and so gen) looks at. Its modules are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = []

    def install(distribution: str, module: str, source: str) -> None:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        dist_info = tmp_path / f"{distribution.replace('-', '_')}-0.1.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
        (dist_info / "entry_points.txt").write_text(f"[gen]\n{module} = {module}\n")
        modules.append(module)

    yield install
    for module in modules:
        sys.modules.pop(module, None)


WORKING_PLUGIN = """
    import numpy as np
    from gen.core import hookimpl

    class LastToken:
        '''Always pick the last token.'''

        def __call__(self, logits, rng):
            return np.full(len(logits), logits.shape[-1] - 1, dtype=np.int64)

    @hookimpl
    def register_samplers(register):
        register("last_token", LastToken)
"""

BROKEN_PLUGIN = """
    import gen_tests_missing_dependency  # not installed: importing this plugin fails
"""


def test_a_plugin_that_fails_to_import_is_reported_and_the_others_keep_working(fresh_plugins, site_directory):
    site_directory("gen-tests-working", "gen_tests_working", WORKING_PLUGIN)
    site_directory("gen-tests-broken", "gen_tests_broken", BROKEN_PLUGIN)

    result = invoke_gen("plugins")

    assert result.exit_code == 0, result.output
    assert ["sampler", "last_token", "gen-tests-working"] in table_rows(result.output)
    assert ["sampler", "greedy", "gen"] in table_rows(result.output)
    assert (
        "failed: gen_tests_broken from gen-tests-broken: "
        "ModuleNotFoundError: No module named 'gen_tests_missing_dependency'" in result.output
    )
    failed = json.loads(invoke_gen("plugins", "--json").output)["failed"]
    assert [entry["name"] for entry in failed] == ["gen_tests_broken"]
    # Other commands warn in one line and go on.
    [warning] = get_plugins().warnings()
    assert "'gen_tests_broken' from gen-tests-broken failed to load" in warning
    ids = build_sampler_chain(["last_token"])(np.zeros((2, 7), dtype=np.float32), np.random.default_rng(0))
    np.testing.assert_array_equal(ids, [6, 6])


def test_gen_plugins_allowlist_excludes_other_third_party_plugins(fresh_plugins, site_directory, monkeypatch):
    site_directory("gen-tests-working", "gen_tests_working", WORKING_PLUGIN)
    site_directory("gen-tests-broken", "gen_tests_broken", BROKEN_PLUGIN)

    monkeypatch.setenv("GEN_PLUGINS", "")  # no third-party plugins at all; built-ins always load
    registry = get_registry()
    assert "last_token" not in registry.names("sampler")
    assert "greedy" in registry.names("sampler")
    assert get_plugins().failures == []  # an excluded plugin is not even imported

    reset_plugins()  # GEN_PLUGINS is read when the plugins are loaded
    monkeypatch.setenv("GEN_PLUGINS", "gen_tests_working")  # any spelling of the name
    registry = get_registry()
    assert registry.entry("sampler", "last_token").provider == "gen-tests-working"
    assert get_plugins().failures == []
    assert "gen_tests_broken" not in sys.modules


# --- the example package, really installed ----------------------------------------


def environment_distributions() -> set[str]:
    """The distributions installed in this virtual environment (what `pip list` shows)."""
    result = subprocess.run([sys.executable, "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return {package["name"].lower() for package in json.loads(result.stdout)}


@pytest.fixture(scope="session")
def typical_installed(tmp_path_factory):
    """examples/gen-typical really pip-installed, into a throwaway folder (`pip install
    --target`), never into this virtual environment: the environment for the commands that
    use it, with the folder on PYTHONPATH, where its entry point is found.

    It is built from a copy so that the build leaves nothing in the repository; the
    virtual environment's distributions are checked to be the same afterwards."""
    source = tmp_path_factory.mktemp("example") / "gen-typical"
    shutil.copytree(EXAMPLE_PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path_factory.mktemp("site") / "gen-typical-target"
    before = environment_distributions()
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(source)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert any(target.glob("gen_typical-*.dist-info")), sorted(path.name for path in target.iterdir())
    environment = environment_without_allowlist()
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), environment.get("PYTHONPATH")]))
    yield environment
    assert environment_distributions() == before, "the test installed something into the virtual environment"


def test_installed_example_is_listed_by_gen_plugins(typical_installed):
    result = subprocess.run([str(GEN_SCRIPT), "plugins"], capture_output=True, text=True, env=typical_installed)
    assert result.returncode == 0, result.stderr
    assert ["sampler", "typical", "gen-typical"] in table_rows(result.stdout)


def test_installed_example_samples_by_name(typical_installed):
    script = textwrap.dedent("""
        import numpy as np
        from gen.core.sampling import build_sampler_chain

        sampler = build_sampler_chain(["typical:p=0.5"])
        logits = np.random.default_rng(0).normal(size=(64, 50)).astype(np.float32)
        ids = sampler(logits, np.random.default_rng(1))
        assert ids.dtype == np.int64 and ids.shape == (64,), (ids.dtype, ids.shape)
        assert ((ids >= 0) & (ids < 50)).all(), ids
        print("sampled", len(ids))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=typical_installed)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "sampled 64"



# --- the torch line ---------------------------------------------------------------


def test_plugins_and_runtime_import_and_gen_plugins_runs_without_torch(tmp_path):
    script = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # from here on, `import torch` raises ImportError

        import gen.core, gen.runtime, gen.plugins.samplers, gen.plugins.tokenizers
        from click.testing import CliRunner
        from gen.core.cli import cli

        result = CliRunner().invoke(cli, ["plugins"])
        assert result.exit_code == 0, (result.output, repr(result.exception))
        assert "greedy" in result.output and "bigram" in result.output, result.output
        torch_modules = [name for name in sys.modules if name == "torch" or name.startswith("torch.")]
        assert torch_modules == ["torch"] and sys.modules["torch"] is None, torch_modules
        print("torch-free")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "torch-free"
