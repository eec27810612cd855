"""The layout's promises, checked on the real source: no circle, imports one way, stages in order."""

from __future__ import annotations

from pathlib import Path

from scripts.import_graph import Module, find_cycles, layer_violations, read_graph, stage_violations


def test_the_house_keeps_its_rules() -> None:
    modules = read_graph()
    assert len(modules) > 50
    assert find_cycles(modules) == []
    assert layer_violations(modules) == []
    assert stage_violations(modules) == []


def graph(edges: dict[str, set[str]]) -> dict[str, Module]:
    return {name: Module(name, Path(name), set(targets)) for name, targets in edges.items()}


def test_the_checks_catch_what_they_promise() -> None:
    """The checks are not vacuous: each finds a planted fault."""
    p = "dellm.coordinator.pipeline."
    circle = graph({"dellm.node.a": {"dellm.node.b"}, "dellm.node.b": {"dellm.node.a"}})
    assert find_cycles(circle) == [["dellm.node.a", "dellm.node.b", "dellm.node.a"]]
    upward = graph({"dellm.node.a": {"dellm.coordinator.b"}, "dellm.coordinator.b": set()})
    assert layer_violations(upward) == ["dellm.node.a imports dellm.coordinator.b, a layer above it"]
    later = graph({p + "dispatch": {p + "reward", "dellm.coordinator.node_client"}, p + "reward": set(),
                   "dellm.coordinator.node_client": set(), p + "answers": {p + "route"}, p + "route": set()})
    assert sorted(stage_violations(later)) == sorted([
        "stage dispatch (3) imports the later stage reward (6)",
        f"{p}dispatch imports dellm.coordinator.node_client",
        f"shared module {p}answers imports the stage {p}route",
    ])
