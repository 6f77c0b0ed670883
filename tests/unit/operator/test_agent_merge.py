"""The agent's merge of a fresh list with watch events already received."""

from typing import Any

from cni_operator.agent import merge_listing


def obj(name: str, rv: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": str(rv)}}


def test_newer_copy_wins_and_deleted_objects_go() -> None:
    current = {"a": obj("a", 12), "b": obj("b", 5), "gone": obj("gone", 3), "new": obj("new", 20)}
    merged = merge_listing(current, [obj("a", 10), obj("b", 8), obj("c", 9)], listed_rv=15)
    assert merged == {"a": obj("a", 12), "b": obj("b", 8), "c": obj("c", 9), "new": obj("new", 20)}
