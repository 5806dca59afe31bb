import pytest

from mpsearch.errors import MpsearchError
from mpsearch.registry import Registry


def test_unknown_name_lists_valid_choices():
    reg = Registry("widget")
    reg.register("b")(int)
    reg.register("a")(float)
    assert reg.get("a") is float
    assert reg.names() == ["a", "b"]
    with pytest.raises(MpsearchError, match=r"Unknown widget 'c'; valid choices: a, b\."):
        reg.get("c")


def test_double_registration_is_an_error():
    reg = Registry("widget")
    reg.register("a")(int)
    with pytest.raises(MpsearchError, match="registered twice"):
        reg.register("a")(float)
