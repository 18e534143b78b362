import pytest

from gen.core.plugins import reset_plugins


@pytest.fixture
def fresh_plugins():
    """Plugins loaded anew for this test and forgotten after it, so that a plugin the
    test registers, or a GEN_PLUGINS it sets, does not leak into other tests."""
    reset_plugins()
    yield
    reset_plugins()
