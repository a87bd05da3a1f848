import importlib

import pytest

import tuneless


@pytest.mark.parametrize("module, attr", [("tuneless.evaluate", "evaluate"),
                                          ("tuneless.reduce", "reduce"),
                                          ("tuneless.export", "export"),
                                          ("tuneless.llm.perplexity", "perplexity")])
def test_function_stays_callable_after_its_module_is_imported(module, attr):
    mod = importlib.import_module(module)
    assert callable(mod)
    package = importlib.import_module(module.rsplit(".", 1)[0])
    assert callable(getattr(package, attr))


def test_unknown_public_name_is_a_plain_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tuneless.nope  # noqa: B018
    assert "fold" in dir(tuneless)
