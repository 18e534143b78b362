"""Tests for the plugin, in-process: `pytest examples/gen-typical` from gen's repository."""
import numpy as np
import pytest
from click.testing import CliRunner

import gen_typical
from gen.core import GenError
from gen.core.cli import cli
from gen.core.registry import get_plugins, reset_plugins
from gen.core.sampling import build_sampler_chain


@pytest.fixture
def typical_registered():
    """gen's plugins with this module registered, as if the package were installed."""
    reset_plugins()
    plugins = get_plugins()
    if not plugins.is_registered(gen_typical):  # already loaded when the package is installed
        plugins.register(gen_typical, "gen-typical")
    yield
    reset_plugins()  # the next test starts from the installed plugins only


def test_gen_plugins_lists_typical(typical_registered):
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    assert any(line.split()[:2] == ["sampler", "typical"] for line in result.output.splitlines())


def test_typical_skips_a_likely_but_untypical_token(typical_registered):
    # One token with probability 0.4 and fifteen with 0.04: the entropy (about 2.3 nats)
    # is close to the surprise of the small ones (3.2) and far from the big one's (0.9),
    # so with p=0.5 typical keeps thirteen small tokens and never the most likely one.
    probs = np.array([0.4] + [0.04] * 15)
    logits = np.tile(np.log(probs).astype(np.float32), (2000, 1))
    sampler = build_sampler_chain(["typical:p=0.5"])
    ids = sampler(logits, np.random.default_rng(0))
    assert ids.dtype == np.int64 and ids.shape == (2000,)
    assert 0 not in ids
    assert len(np.unique(ids)) == 13


def test_typical_rejects_p_out_of_range(typical_registered):
    with pytest.raises(GenError, match="0 < p <= 1"):
        build_sampler_chain(["typical:p=0"])
