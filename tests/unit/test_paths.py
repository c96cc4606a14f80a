"""safe_component: any model or class name becomes one component that stays inside its folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.paths import MAX_COMPONENT_CHARS, safe_component

HOSTILE = [
    "..",
    ".",
    "",
    "/",
    "../../etc",
    "a/../../b",
    "a\\..\\b",
    "/abs/path",
    "x" * 10_000,
    "Pneumothorax é",
    "気胸",
    "🫁" * 300,
    "-rf",
    ".hidden",
    "nul\x00byte",
    "line\nbreak",
    "MRN0012345",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_every_name_becomes_one_safe_component_that_can_be_created(name, tmp_path):
    part = safe_component(name)
    assert part and part not in (".", "..")
    assert "/" not in part and "\\" not in part and "\x00" not in part
    assert not part.startswith((".", "-"))
    assert len(part.encode()) <= MAX_COMPONENT_CHARS
    target = tmp_path / "reports" / part
    target.mkdir(parents=True)  # no ENAMETOOLONG, no escape
    assert target.resolve().parent == (tmp_path / "reports").resolve()
    assert os.listdir(tmp_path / "reports") == [part]


def test_clean_names_are_kept_as_they_are():
    for name in ("cxr-ptx", "pneumothorax", "model_v2.1", "1", "a+b"):
        assert safe_component(name) == name


def test_distinct_names_stay_distinct_even_when_long_or_cleaned():
    long_a, long_b = "m" * 500 + "a", "m" * 500 + "b"
    names = [long_a, long_b, "a/b", "a\\b", "a b", "..", "."]
    parts = [safe_component(n) for n in names]
    assert len(set(parts)) == len(names)
    assert safe_component(long_a).startswith("m" * 80)  # readable prefix kept
    assert safe_component("a/b") != "a_b" == safe_component("a_b")


def test_the_same_name_always_gives_the_same_component():
    assert safe_component("../x" * 50) == safe_component("../x" * 50)


def test_a_tiny_limit_is_refused():
    with pytest.raises(ValueError, match="max_chars"):
        safe_component("x", max_chars=8)


def test_joined_components_stay_under_the_base(tmp_path):
    base = Path(tmp_path)
    for model in ("..", "../.."):
        for cls in ("..", "/etc"):
            path = base / safe_component(model) / safe_component(cls)
            assert base.resolve() in path.resolve().parents
