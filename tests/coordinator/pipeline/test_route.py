"""Stage 2 (route): scores, redundancy and node choice. Pure, no network."""

from __future__ import annotations

import itertools
import re
import statistics
from dataclasses import replace

import pytest

from dellm.coordinator.config import RouteConfig
from dellm.coordinator.errors import NoNodesAvailableError
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.pipeline.route import (
    LatencyPrior,
    OperationLatencies,
    clearly_strongest_model,
    redundancy_for,
    route_chunk,
    score_nodes,
)
from dellm.coordinator.types import Chunk, NodeRecord, OpStats
from dellm.protos.wire import NodeDescription

CONFIG = RouteConfig(exploration="none")  # the seed's score exactly; exploration is tested at the end


def _node(node_id: str, latency_ms: float | None = 100.0, fitness: float = 0.5, state: str = "up") -> NodeRecord:
    return NodeRecord(
        NodeDescription(node_id, f"127.0.0.1:{5000 + len(node_id)}"),
        fitness=fitness,
        latency_ms=latency_ms,
        state=state,
    )


def _chunk(complexity: float, chunk_id: str = "c1") -> Chunk:
    return Chunk(chunk_id, Operation.GENERATE_OP, "find best savings accounts", 4, complexity)


def _seed_score(latency: float, max_latency: float, fitness: float) -> float:
    return 0.7 * latency / max_latency + 0.3 * (1.0 - fitness)


LOW = _chunk(0.1)  # below the redundancy threshold: one node
HIGH = _chunk(0.8)  # above it: two nodes


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        pytest.param(
            [_node("a", 100, 0.9), _node("b", 200, 0.5), _node("c", 400, 0.1)],
            {"a": _seed_score(100, 400, 0.9), "b": _seed_score(200, 400, 0.5), "c": _seed_score(400, 400, 0.1)},
            id="three-nodes",
        ),
        pytest.param([_node("solo", 250, 0.3)], {"solo": _seed_score(250, 250, 0.3)}, id="single-node"),
        pytest.param(
            [_node("a", 50, 0.0), _node("b", 50, 1.0)],
            {"a": _seed_score(50, 50, 0.0), "b": _seed_score(50, 50, 1.0)},
            id="fitness-extremes",
        ),
        pytest.param(
            [_node("a", 100, 0.5), _node("gone", 10_000, 0.5, "down")],
            {"a": _seed_score(100, 100, 0.5)},
            id="down-node-not-scored-nor-in-max",
        ),
    ],
)
def test_score_is_seed_formula(nodes: list[NodeRecord], expected: dict[str, float]) -> None:
    scores = {node_id: score for score, node_id in score_nodes(nodes, {}, CONFIG)}

    assert scores == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_score_uses_configured_weights() -> None:
    config = RouteConfig(latency_weight=0.5, fitness_weight=0.5, exploration="none")

    scores = {n: s for s, n in score_nodes([_node("a", 100, 0.8), _node("b", 200, 0.2)], {}, config)}

    assert scores == pytest.approx({"a": 0.5 * 0.5 + 0.5 * 0.2, "b": 0.5 * 1.0 + 0.5 * 0.8})


@pytest.mark.parametrize(
    ("nodes", "winner"),
    [
        pytest.param([_node("slow", 900, 0.9), _node("fast", 100, 0.9)], "fast", id="faster-wins-equal-fitness"),
        pytest.param([_node("weak", 100, 0.1), _node("fit", 100, 0.9)], "fit", id="fitter-wins-equal-latency"),
        pytest.param([_node("a", 800, 0.2), _node("b", 100, 0.95), _node("c", 500, 0.5)], "b", id="fast-and-fit"),
        pytest.param(
            [_node("fit-slow", 1000, 1.0), _node("fast-unfit", 100, 0.0)], "fast-unfit", id="latency-outweighs-fitness"
        ),
    ],
)
def test_fast_fit_node_wins(nodes: list[NodeRecord], winner: str) -> None:
    assert route_chunk(LOW, nodes, {}, CONFIG).node_ids == (winner,)


@pytest.mark.parametrize(
    ("complexity", "config", "expected"),
    [
        pytest.param(0.0, CONFIG, 1, id="trivial"),
        pytest.param(0.349, CONFIG, 1, id="just-below-threshold"),
        pytest.param(0.35, CONFIG, 2, id="at-threshold"),
        pytest.param(0.9, CONFIG, 2, id="above-threshold"),
        pytest.param(1.0, CONFIG, 2, id="max"),
        pytest.param(0.6, RouteConfig(redundancy=3, redundancy_threshold=0.5), 3, id="custom-redundancy"),
        pytest.param(0.4, RouteConfig(redundancy=3, redundancy_threshold=0.5), 1, id="custom-threshold"),
    ],
)
def test_redundancy_for(complexity: float, config: RouteConfig, expected: int) -> None:
    assert redundancy_for(_chunk(complexity), config) == expected


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        pytest.param(LOW, ("a",), id="below-threshold-one-node"),
        pytest.param(_chunk(CONFIG.redundancy_threshold), ("a", "b"), id="at-threshold-two-nodes"),
        pytest.param(HIGH, ("a", "b"), id="above-threshold-two-nodes"),
    ],
)
def test_complexity_decides_how_many_nodes(chunk: Chunk, expected: tuple[str, ...]) -> None:
    nodes = [_node("c", 300), _node("a", 100), _node("b", 200)]

    assignment = route_chunk(chunk, nodes, {}, CONFIG)

    assert assignment.chunk_id == chunk.chunk_id
    assert assignment.node_ids == expected


@pytest.mark.parametrize(
    ("nodes", "count", "expected"),
    [
        pytest.param([_node("a"), _node("b"), _node("c")], 5, 3, id="more-wanted-than-nodes"),
        pytest.param([_node("a")], None, 1, id="one-node-for-redundant-chunk"),
        pytest.param([_node("a"), _node("b", state="down")], None, 1, id="one-live-node"),
        pytest.param([_node(f"n{i}", 100 + i) for i in range(6)], 4, 4, id="explicit-count"),
    ],
)
def test_never_the_same_node_twice(nodes: list[NodeRecord], count: int | None, expected: int) -> None:
    node_ids = route_chunk(HIGH, nodes, {}, CONFIG, count=count).node_ids

    assert len(node_ids) == expected
    assert len(set(node_ids)) == len(node_ids)


@pytest.mark.parametrize(
    ("exclude", "count", "expected"),
    [
        pytest.param(frozenset({"a"}), 1, ("b",), id="best-excluded"),
        pytest.param(frozenset({"a", "b"}), 1, ("c",), id="two-best-excluded"),
        pytest.param(frozenset({"b"}), 2, ("a", "c"), id="middle-excluded"),
        pytest.param(frozenset({"a", "c"}), 3, ("b",), id="only-one-left"),
        pytest.param(frozenset({"nobody"}), 1, ("a",), id="unknown-id-ignored"),
    ],
)
def test_exclude_is_respected(exclude: frozenset[str], count: int, expected: tuple[str, ...]) -> None:
    nodes = [_node("a", 100), _node("b", 200), _node("c", 300)]

    assert route_chunk(HIGH, nodes, {}, CONFIG, count=count, exclude=exclude).node_ids == expected


def test_down_nodes_are_never_chosen() -> None:
    nodes = [
        _node("best", 10, 1.0, "down"),
        _node("ok", 500, 0.5),
        _node("also-down", 1, 1.0, "down"),
        _node("meh", 900, 0.2),
    ]

    assert route_chunk(HIGH, nodes, {}, CONFIG, count=4).node_ids == ("ok", "meh")


@pytest.mark.parametrize(
    ("nodes", "exclude"),
    [
        pytest.param([], frozenset(), id="no-nodes"),
        pytest.param([_node("a", state="down"), _node("b", state="down")], frozenset(), id="all-down"),
        pytest.param([_node("a"), _node("b")], frozenset({"a", "b"}), id="all-excluded"),
        pytest.param([_node("a", state="down"), _node("b")], frozenset({"b"}), id="down-or-excluded"),
    ],
)
def test_no_live_nodes_raises(nodes: list[NodeRecord], exclude: frozenset[str]) -> None:
    with pytest.raises(NoNodesAvailableError, match=re.escape("chunk c7")):
        route_chunk(_chunk(0.8, "c7"), nodes, {}, CONFIG, exclude=exclude)


@pytest.mark.parametrize(
    ("in_flight", "winner"),
    [
        pytest.param({}, "a", id="idle-tie-goes-to-first-id"),
        pytest.param({"a": 1}, "b", id="busy-a-loses"),
        pytest.param({"b": 2}, "a", id="busy-b-loses"),
        pytest.param({"a": 1, "b": 1}, "a", id="equally-busy"),
        pytest.param({"a": 3, "b": 1}, "b", id="less-busy-wins"),
        pytest.param({"zzz": 5}, "a", id="unknown-node-load-ignored"),
    ],
)
def test_in_flight_load_makes_busy_node_lose(in_flight: dict[str, int], winner: str) -> None:
    nodes = [_node("a", 200, 0.6), _node("b", 200, 0.6)]

    assert route_chunk(LOW, nodes, in_flight, CONFIG).node_ids == (winner,)


def test_in_flight_multiplies_expected_latency() -> None:
    nodes = [_node("a", 100, 0.5), _node("b", 100, 0.5)]

    scores = {n: s for s, n in score_nodes(nodes, {"a": 2}, CONFIG)}

    # a is expected to take 100 x (1 + 2) = 300 ms, the worst, b 100 ms.
    assert scores == pytest.approx({"a": _seed_score(300, 300, 0.5), "b": _seed_score(100, 300, 0.5)})


def test_busy_fast_node_can_still_beat_idle_slow_node() -> None:
    nodes = [_node("fast", 100, 0.5), _node("slow", 1000, 0.5)]

    assert route_chunk(LOW, nodes, {"fast": 1}, CONFIG).node_ids == ("fast",)


@pytest.mark.parametrize(
    ("measured", "prior"),
    [
        pytest.param([100.0, 300.0], 200.0, id="even-count-median"),
        pytest.param([100.0, 200.0, 900.0], 200.0, id="odd-count-median-not-mean"),
        pytest.param([400.0], 400.0, id="one-measured"),
    ],
)
def test_unmeasured_latency_uses_median_prior(measured: list[float], prior: float) -> None:
    nodes = [_node(f"m{i}", latency, 0.5) for i, latency in enumerate(measured)] + [_node("new", None, 0.5)]
    worst = max([*measured, prior])

    scores = {n: s for s, n in score_nodes(nodes, {}, CONFIG)}

    assert prior == statistics.median(measured)
    assert scores["new"] == pytest.approx(_seed_score(prior, worst, 0.5))


def test_median_prior_ignores_down_nodes() -> None:
    nodes = [_node("a", 100, 0.5), _node("b", 300, 0.5), _node("down", 100_000, 0.5, "down"), _node("new", None, 0.5)]

    scores = {n: s for s, n in score_nodes(nodes, {}, CONFIG)}

    assert scores["new"] == pytest.approx(_seed_score(200, 300, 0.5))


def test_no_measured_latency_uses_default_prior() -> None:
    nodes = [_node("a", None, 0.8), _node("b", None, 0.2)]
    config = RouteConfig(default_latency_ms=750.0, exploration="none")

    scores = {n: s for s, n in score_nodes(nodes, {}, config)}

    assert scores == pytest.approx({"a": _seed_score(750, 750, 0.8), "b": _seed_score(750, 750, 0.2)})
    assert route_chunk(LOW, nodes, {}, config).node_ids == ("a",)


def test_zero_latencies_do_not_divide_by_zero() -> None:
    scores = {n: s for s, n in score_nodes([_node("a", 0.0, 0.5), _node("b", 0.0, 1.0)], {}, CONFIG)}

    assert scores == pytest.approx({"a": 0.15, "b": 0.0})


_TIED = [_node("delta"), _node("alpha"), _node("charlie"), _node("bravo")]


@pytest.mark.parametrize(
    "order",
    list(itertools.permutations(range(len(_TIED)))),
    ids=lambda order: "order-" + "".join(map(str, order)),
)
def test_ties_break_on_node_id_whatever_the_input_order(order: tuple[int, ...]) -> None:
    nodes = [_TIED[i] for i in order]

    assert route_chunk(HIGH, nodes, {}, CONFIG).node_ids == ("alpha", "bravo")
    assert route_chunk(HIGH, nodes, {}, CONFIG, count=4).node_ids == ("alpha", "bravo", "charlie", "delta")


# --- fitness per operation type, and exploration ------------------------------------------------

def _specialist(node_id: str, op_fitness: dict[str, tuple[float, int, int]], fitness: float = 0.5) -> NodeRecord:
    from dellm.coordinator.types import OpStats

    return NodeRecord(NodeDescription(node_id, "127.0.0.1:1"), fitness=fitness, latency_ms=100.0,
                      op_stats={op: OpStats(*stats) for op, stats in op_fitness.items()})


def _math_chunk() -> Chunk:
    return Chunk("c1", Operation.MATH_OP, "What is 2 + 2?", 6, 0.1)


def test_fitness_is_kept_per_operation_type() -> None:
    mathematician = _specialist("math", {"MATH_OP": (0.9, 20, 19), "GENERATE_OP": (0.2, 20, 3)})
    librarian = _specialist("lib", {"MATH_OP": (0.2, 20, 3), "GENERATE_OP": (0.9, 20, 19)})
    config = RouteConfig(exploration="none")
    nodes = [mathematician, librarian]
    assert route_chunk(_math_chunk(), nodes, {}, config).node_ids == ("math",)
    assert route_chunk(_chunk(0.1), nodes, {}, config).node_ids == ("lib",)


def test_a_node_not_yet_judged_at_an_operation_uses_its_overall_fitness() -> None:
    node = _specialist("n", {"GENERATE_OP": (0.9, 5, 5)}, fitness=0.4)
    assert node.fitness_for("MATH_OP") == 0.4 and node.fitness_for("GENERATE_OP") == 0.9


def test_ucb_gives_an_untried_node_a_chance_and_fades_with_evidence() -> None:
    veteran = _specialist("veteran", {"MATH_OP": (0.7, 200, 150)})
    newcomer = _specialist("newcomer", {}, fitness=0.5)
    chosen = route_chunk(_math_chunk(), [veteran, newcomer], {}, RouteConfig(exploration="ucb"))
    assert chosen.node_ids == ("newcomer",)  # optimism for the unknown
    assert route_chunk(_math_chunk(), [veteran, newcomer], {}, RouteConfig(exploration="none")).node_ids == (
        "veteran",)
    tried_and_weak = _specialist("newcomer", {"MATH_OP": (0.3, 60, 10)})
    assert route_chunk(_math_chunk(), [veteran, tried_and_weak], {}, RouteConfig(exploration="ucb")).node_ids == (
        "veteran",)


def test_thompson_sampling_is_reproducible_with_a_seed_and_mostly_exploits() -> None:
    import random

    good = _specialist("good", {"MATH_OP": (0.8, 50, 40)})
    weak = _specialist("weak", {"MATH_OP": (0.6, 10, 6)})  # less evidence: still sampled now and then
    config = RouteConfig(exploration="thompson")

    def picks(seed: int) -> list[str]:
        rng = random.Random(seed)
        return [route_chunk(_math_chunk(), [good, weak], {}, config, rng=rng).node_ids[0] for _ in range(200)]

    assert picks(7) == picks(7)
    assert picks(7) != picks(8)
    assert 150 < picks(7).count("good") < 200


# --- 1. latency normalised among this chunk's candidates ------------------------------------------

@pytest.mark.parametrize(
    ("nodes", "exclude", "expected"),
    [
        pytest.param(
            [_node("a", 100, 0.5), _node("b", 200, 0.9), _node("c", 2000, 0.5)], frozenset({"c"}),
            {"a": _seed_score(100, 200, 0.5), "b": _seed_score(200, 200, 0.9)},
            id="excluded-node-sets-no-worst",
        ),
        pytest.param(
            [_node("a", 100, 0.5), _node("b", 200, 0.9), _node("c", 2000, 0.5)], frozenset(),
            {"a": _seed_score(100, 2000, 0.5), "b": _seed_score(200, 2000, 0.9), "c": _seed_score(2000, 2000, 0.5)},
            id="nothing-excluded-as-the-seed",
        ),
        pytest.param(
            [_node("a", 100, 0.5), _node("b", 300, 0.5), _node("c", 10_000, 0.5), _node("new", None, 0.5)],
            frozenset({"c"}),
            {"a": _seed_score(100, 300, 0.5), "b": _seed_score(300, 300, 0.5), "new": _seed_score(300, 300, 0.5)},
            id="excluded-node-still-informs-the-prior",  # median of 100, 300, 10000
        ),
    ],
)
def test_latency_is_normalised_among_the_candidates(
        nodes: list[NodeRecord], exclude: frozenset[str], expected: dict[str, float]) -> None:
    scores = {node_id: score for score, node_id in score_nodes(nodes, {}, CONFIG, exclude=exclude)}

    assert scores == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(
    ("absent", "winner"),
    [
        pytest.param(_node("far", 3000, 0.5), "fast", id="slow-outsider"),
        pytest.param(_node("far", 10, 0.5), "fast", id="fast-outsider"),
    ],
)
def test_an_excluded_node_does_not_change_how_the_others_rank(absent: NodeRecord, winner: str) -> None:
    """The fast node (3x faster, fitness 0.5) against the fit one (0.9): the seed's score decides the
    same whether a third node is absent or present but excluded. Before, a slow excluded node shrank
    their latency gap and flipped the choice to the fit node on a retry."""
    pair = [_node("fast", 100, 0.5), _node("fit", 300, 0.9)]

    alone = route_chunk(LOW, pair, {}, CONFIG).node_ids
    with_excluded = route_chunk(LOW, [*pair, absent], {}, CONFIG, exclude=frozenset({"far"})).node_ids

    assert alone == with_excluded == (winner,)


def test_a_quarantined_node_sets_no_worst() -> None:
    from dellm.coordinator.types import OpStats

    liar = NodeRecord(NodeDescription("liar", "127.0.0.1:1"), latency_ms=5000.0,
                      op_stats={"GENERATE_OP": OpStats(0.05, 10, 0)})
    nodes = [_node("a", 100, 0.5), _node("b", 400, 0.5), liar]

    scores = {n: s for s, n in score_nodes(nodes, {}, CONFIG, "GENERATE_OP")}

    assert scores == pytest.approx({"a": _seed_score(100, 400, 0.5), "b": _seed_score(400, 400, 0.5)})


@pytest.mark.parametrize("tokens", [1, 6, 60, 600])
def test_the_chunk_length_scales_every_candidate_alike_and_changes_no_ranking(tokens: int) -> None:
    nodes = [_node("a", 100, 0.2), _node("b", 250, 0.9), _node("c", 400, 0.6)]
    chunk = Chunk("c1", Operation.GENERATE_OP, "find " + "word " * tokens, tokens, 0.8)

    assert route_chunk(chunk, nodes, {}, CONFIG).node_ids == route_chunk(HIGH, nodes, {}, CONFIG).node_ids


# --- 2. fitness weighs as much as its evidence allows ---------------------------------------------

@pytest.mark.parametrize(
    ("trials", "config", "weights"),
    [
        pytest.param(0, RouteConfig(), (0.7, 0.3), id="no-evidence-the-seed"),
        pytest.param(1, RouteConfig(), (0.7 - 0.4 / 11, 0.3 + 0.4 / 11), id="one-trial"),
        pytest.param(10, RouteConfig(), (0.5, 0.5), id="half-way-at-k"),
        pytest.param(20, RouteConfig(), (0.7 - 0.8 / 3, 0.3 + 0.8 / 3), id="twenty-trials"),
        pytest.param(10_000, RouteConfig(), (0.7 - 0.4 * 10_000 / 10_010, 0.3 + 0.4 * 10_000 / 10_010),
                     id="toward-the-cap"),
        pytest.param(20, RouteConfig(fitness_weight_cap=0.3), (0.7, 0.3), id="cap-at-base-turns-it-off"),
        pytest.param(20, RouteConfig(fitness_weight_cap=0.1), (0.7, 0.3), id="cap-below-base-turns-it-off"),
        pytest.param(10, RouteConfig(latency_weight=0.5, fitness_weight=0.5), (0.4, 0.6), id="custom-weights"),
        pytest.param(5, RouteConfig(evidence_half_trials=5), (0.5, 0.5), id="custom-half-way"),
        pytest.param(10_000, RouteConfig(latency_weight=0.1, fitness_weight=0.3, fitness_weight_cap=0.9),
                     (0.0, 0.4), id="latency-weight-never-negative"),
    ],
)
def test_evidence_weights(trials: int, config: RouteConfig, weights: tuple[float, float]) -> None:
    from dellm.coordinator.pipeline.route import evidence_weights

    assert evidence_weights(trials, config) == pytest.approx(weights)


def _judged(node_id: str, latency_ms: float, fitness: float, trials: int = 0, overall: float = 0.5,
            model: str = "", operation: str = "GENERATE_OP") -> NodeRecord:
    """A node with ``trials`` judged answers at ``operation`` at ``fitness`` (successes in proportion)."""
    from dellm.coordinator.types import OpStats

    stats = {operation: OpStats(fitness, trials, round(fitness * trials))} if trials else {}
    return NodeRecord(NodeDescription(node_id, "127.0.0.1:1", model=model), fitness=overall,
                      latency_ms=latency_ms, op_stats=stats)


@pytest.mark.parametrize(
    ("nodes", "config", "winner"),
    [
        pytest.param([_judged("fast", 100, 0.3, 20), _judged("slow", 300, 0.9, 20)], CONFIG, "slow",
                     id="proven-right-3x-slower-beats-proven-wrong"),
        pytest.param([_judged("fast", 100, 0.3, 20), _judged("slow", 300, 0.9, 20)],
                     RouteConfig(exploration="none", fitness_weight_cap=0.3), "fast",
                     id="same-without-evidence-weighting-the-old-starving"),
        pytest.param([_judged("fast", 100, 0.0, overall=0.3), _judged("slow", 300, 0.0, overall=0.9)], CONFIG,
                     "fast", id="no-evidence-the-seed-decides"),
        pytest.param([_judged("fast", 100, 0.3, 2), _judged("slow", 300, 0.9, 2)], CONFIG, "fast",
                     id="little-evidence-the-seed-still-decides"),
        pytest.param([_judged("fast", 100, 0.9, 20), _judged("slow", 300, 0.9, 20)], CONFIG, "fast",
                     id="equally-right-the-faster-wins"),
        pytest.param([_judged("fast", 100, 0.85, 50), _judged("slow", 300, 0.95, 50)], CONFIG, "fast",
                     id="nearly-as-right-and-3x-faster-wins"),
        pytest.param([_judged("fast", 100, 0.3, 20), _judged("slow", 300, 0.0, overall=0.9)], CONFIG, "slow",
                     id="one-proven-candidate-weighs-the-decision"),
        pytest.param([_judged("fast", 100, 0.3, 20), _judged("slow", 1000, 0.9, 20)], CONFIG, "fast",
                     id="10x-slower-still-loses-at-20-trials"),
        pytest.param([_judged("fast", 100, 0.3, 200), _judged("slow", 1000, 0.9, 200)], CONFIG, "slow",
                     id="10x-slower-wins-once-the-evidence-is-strong"),
    ],
)
def test_fitness_weighs_as_much_as_its_evidence(nodes: list[NodeRecord], config: RouteConfig, winner: str) -> None:
    assert route_chunk(LOW, nodes, {}, config).node_ids == (winner,)


def test_evidence_weights_are_the_same_for_every_candidate_of_a_decision() -> None:
    """One node's evidence sets the decision's weights; equal latencies then cost both the same."""
    veteran, newcomer = _judged("veteran", 200, 0.7, 200), _judged("newcomer", 200, 0.0, overall=0.7)

    scores = {n: s for s, n in score_nodes([veteran, newcomer], {}, CONFIG, "GENERATE_OP")}

    assert scores["veteran"] == pytest.approx(scores["newcomer"])


def test_under_thompson_work_moves_to_the_proven_right_node() -> None:
    import random

    nodes = [_judged("fast", 100, 0.3, 20), _judged("slow", 300, 0.9, 20)]

    def share_of_slow(config: RouteConfig, trials: int) -> float:
        rng = random.Random(5)
        judged = [_judged(n.node_id, n.latency_ms or 0, n.op_stats["GENERATE_OP"].fitness, trials) for n in nodes]
        picks = [route_chunk(LOW, judged, {}, config, rng=rng).node_ids[0] for _ in range(1000)]
        return picks.count("slow") / len(picks)

    starving = share_of_slow(RouteConfig(fitness_weight_cap=0.3), 20)
    at_20, at_50 = share_of_slow(RouteConfig(), 20), share_of_slow(RouteConfig(), 50)
    assert starving < 0.05  # the seed's weights: the right node starves
    assert 0.5 < at_20 < at_50  # the default: it gets the work, more as evidence grows
    assert at_50 > 0.95


# --- 3. truth from diversity: the strongest model, distinct models --------------------------------

Q15, Q05, G270, S135 = ("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m",
                        "smollm2-135m-instruct")


@pytest.mark.parametrize(
    ("model", "size"),
    [
        pytest.param(Q15, 1.5e9, id="qwen-1.5b"),
        pytest.param(Q05, 0.5e9, id="qwen-0.5b"),
        pytest.param(G270, 270e6, id="gemma-270m"),
        pytest.param(S135, 135e6, id="smollm-135m"),
        pytest.param("Llama-3.2-1B-Instruct-Q4_K_M.gguf", 1e9, id="upper-case-and-quantization"),
        pytest.param("mistral-7b-v0.1", 7e9, id="7b"),
        pytest.param("scripted-good-0", 0.0, id="no-size"),
        pytest.param("", 0.0, id="empty"),
        pytest.param("phi-3-mini-4k", 0.0, id="context-length-is-no-size"),
    ],
)
def test_model_size_from_the_name(model: str, size: float) -> None:
    from dellm.coordinator.pipeline.route import model_size

    assert model_size(model) == pytest.approx(size)


def test_sizes_order_the_shipped_models() -> None:
    from dellm.coordinator.pipeline.route import model_size

    assert sorted([S135, Q05, G270, Q15], key=model_size, reverse=True) == [Q15, Q05, G270, S135]


# The network and the shipped four: the bigger the model, the slower.
BIG = _judged("big", 900, 0.0, model=Q15)
SMALL_A, SMALL_B = _judged("small-a", 300, 0.0, model=Q05), _judged("small-b", 300, 0.0, model=Q05)
GEMMA, SMOL = _judged("gemma", 200, 0.0, model=G270), _judged("smol", 100, 0.0, model=S135)
SEARCH_HIGH = _chunk(0.8)
MATH_HIGH = Chunk("m1", Operation.MATH_OP, "What is 123 + 456?", 6, 0.55)


def _proven(node: NodeRecord, fitness: float, trials: int) -> NodeRecord:
    return _judged(node.node_id, node.latency_ms or 0.0, fitness, trials, model=node.info.model)


@pytest.mark.parametrize(
    ("chunk", "nodes", "config", "kwargs", "expected"),
    [
        pytest.param(SEARCH_HIGH, [BIG, SMALL_A, SMALL_B], CONFIG, {}, ("small-a", "big"),
                     id="issue-network-strong-model-paired-not-two-copies"),
        pytest.param(SEARCH_HIGH, [BIG, SMALL_A, SMALL_B], RouteConfig(exploration="none", diversity=False), {},
                     ("small-a", "small-b"), id="diversity-off-the-old-two-copies"),
        pytest.param(MATH_HIGH, [BIG, SMALL_A, SMALL_B], CONFIG, {}, ("small-a", "small-b"),
                     id="checked-chunk-by-score-alone"),
        pytest.param(LOW, [BIG, SMALL_A, SMALL_B], CONFIG, {}, ("small-a",), id="one-node-by-score-alone"),
        pytest.param(SEARCH_HIGH, [BIG, SMALL_A, GEMMA, SMOL], CONFIG, {}, ("smol", "big"),
                     id="shipped-four-strongest-plus-best-scored"),
        pytest.param(SEARCH_HIGH, [BIG, SMALL_A, GEMMA, SMOL], CONFIG, {"count": 3}, ("smol", "gemma", "big"),
                     id="three-slots-all-distinct"),
        pytest.param(SEARCH_HIGH, [SMALL_A, SMALL_B], CONFIG, {}, ("small-a", "small-b"),
                     id="copies-when-no-other-model"),
        pytest.param(SEARCH_HIGH, [BIG, SMALL_A, SMALL_B], CONFIG, {"count": 3}, ("small-a", "small-b", "big"),
                     id="copies-after-every-model"),
        pytest.param(SEARCH_HIGH, [BIG, _judged("big-2", 700, 0.0, model=Q15), SMALL_A], CONFIG, {},
                     ("small-a", "big-2"), id="best-scored-copy-of-the-strongest"),
        pytest.param(SEARCH_HIGH, [BIG, SMALL_A, SMALL_B, SMOL], CONFIG, {"exclude": frozenset({"big"})},
                     ("smol", "small-a"), id="strongest-excluded-next-strongest"),
        pytest.param(SEARCH_HIGH, [_proven(BIG, 0.1, 10), SMALL_A, SMALL_B, SMOL], CONFIG, {},
                     ("smol", "small-a"), id="strongest-quarantined-next-strongest"),
        pytest.param(SEARCH_HIGH, [BIG, SMALL_A, SMALL_B], CONFIG, {"busy": "big"}, ("small-a", "big"),
                     id="busy-strongest-still-taken"),
        pytest.param(SEARCH_HIGH, [_proven(BIG, 0.3, 20), _proven(SMALL_A, 0.9, 20), _proven(SMALL_B, 0.9, 20),
                                   _proven(SMOL, 0.3, 20)], CONFIG, {}, ("small-a", "smol"),
                     id="every-model-judged-strength-by-success-rate"),
        pytest.param(SEARCH_HIGH, [_proven(BIG, 0.3, 20), _proven(SMALL_A, 0.9, 20), _proven(SMALL_B, 0.9, 20),
                                   _proven(SMOL, 0.3, 5)], CONFIG, {}, ("small-a", "big"),
                     id="a-model-not-judged-enough-strength-by-size"),
        pytest.param(SEARCH_HIGH, [_proven(BIG, 0.3, 10), _proven(SMALL_A, 0.9, 5), _proven(SMALL_B, 0.9, 5),
                                   _proven(SMOL, 0.3, 20)], CONFIG, {}, ("small-a", "smol"),
                     id="copies-pool-their-trials"),
        pytest.param(SEARCH_HIGH, [_node("x", 300), _node("y", 100), _node("z", 200)], CONFIG, {}, ("y", "z"),
                     id="unnamed-models-by-score"),
    ],
)
def test_unchecked_chunks_get_the_strongest_model_and_distinct_models(
        chunk: Chunk, nodes: list[NodeRecord], config: RouteConfig, kwargs: dict[str, object],
        expected: tuple[str, ...]) -> None:
    in_flight = {str(kwargs["busy"]): 2} if "busy" in kwargs else {}
    count = kwargs.get("count")
    exclude = kwargs.get("exclude", frozenset())
    assert count is None or isinstance(count, int)
    assert isinstance(exclude, frozenset)

    assert route_chunk(chunk, nodes, in_flight, config, count=count, exclude=exclude).node_ids == expected


@pytest.mark.parametrize(("operation", "text"), [
    (Operation.GENERAL_OP, "what is the freezing point of water in Fahrenheit"),
    (Operation.SEARCH_OP, "who wrote Hamlet"),
])
def test_a_short_question_of_fact_still_goes_to_two_models(operation: Operation, text: str) -> None:
    """Below the complexity threshold, but a fact no check can judge: the strongest model and another."""
    chunk = Chunk("c1", operation, text, 8, 0.1)
    nodes = [_judged(n.node_id, n.latency_ms or 0.0, 0.0, model=n.info.model, operation=operation.value)
             for n in (BIG, SMALL_A, SMALL_B)]

    assert redundancy_for(chunk, CONFIG) == CONFIG.redundancy
    assert route_chunk(chunk, nodes, {}, CONFIG).node_ids == ("small-a", "big")
    assert redundancy_for(Chunk("c2", Operation.GENERATE_OP, "write a haiku", 3, 0.1), CONFIG) == 1
    assert redundancy_for(Chunk("c3", Operation.GENERAL_OP, "Tell me about Paris", 4, 0.1), CONFIG) == 1  # no question


def test_a_clearly_strongest_model_needs_a_difference() -> None:
    unnamed = [_judged("x", 300, 0.0, model="scripted-a"), _judged("y", 100, 0.0, model="scripted-b")]
    assert clearly_strongest_model([BIG, SMALL_A, SMALL_B], "GENERATE_OP", CONFIG) == Q15  # by size
    assert clearly_strongest_model(unnamed, "GENERATE_OP", CONFIG) is None  # no size, no evidence: a tie
    assert clearly_strongest_model([SMALL_A, SMALL_B], "GENERATE_OP", CONFIG) is None  # one model
    # evidence that does not separate them (18/18 against 16/18): size decides
    close = [_proven(BIG, 0.6, 18), _proven(SMALL_A, 0.9, 18)]
    close = [replace(close[0], op_stats={"GENERATE_OP": OpStats(0.6, 18, 16)}),
             replace(close[1], op_stats={"GENERATE_OP": OpStats(0.9, 18, 18)})]
    assert clearly_strongest_model(close, "GENERATE_OP", CONFIG) == Q15
    # evidence that does (40/40 against 10/40): the small model
    apart = [replace(close[0], op_stats={"GENERATE_OP": OpStats(0.2, 40, 10)}),
             replace(close[1], op_stats={"GENERATE_OP": OpStats(0.9, 40, 40)})]
    assert clearly_strongest_model(apart, "GENERATE_OP", CONFIG) == Q05


@pytest.mark.parametrize("operation", [op for op in Operation if op is not Operation.MATH_OP])
def test_every_unchecked_operation_pairs_distinct_models(operation: Operation) -> None:
    chunk = Chunk("c1", operation, "some task", 3, 0.9)
    nodes = [_judged(n.node_id, n.latency_ms or 0.0, 0.0, model=n.info.model, operation=operation.value)
             for n in (BIG, SMALL_A, SMALL_B)]

    assert route_chunk(chunk, nodes, {}, CONFIG).node_ids == ("small-a", "big")


def test_strongest_model_under_thompson_is_always_in_the_pair() -> None:
    import random

    rng = random.Random(11)
    pairs = [route_chunk(SEARCH_HIGH, [BIG, SMALL_A, SMALL_B, GEMMA, SMOL], {}, RouteConfig(), rng=rng).node_ids
             for _ in range(300)]

    assert all("big" in pair and len({p.split("-")[0] for p in pair}) == 2 for pair in pairs)


def test_latency_at_the_operation_routes_a_chunk_to_the_node_fast_at_it() -> None:
    """Overall, the big node looks as fast as the small one; at arithmetic it is four times slower."""
    latencies = OperationLatencies(alpha=0.5)
    big, small = _node("big", 1000.0), _node("small", 1000.0)
    latencies.record("big", "MATH_OP", 4000.0)
    latencies.record("small", "MATH_OP", 1200.0)
    latencies.record("small", "MATH_OP", 800.0)  # moving average: 1000
    latencies.record("big", "GENERAL_OP", float("nan"))  # not a time: ignored
    math_chunk = Chunk("m1", Operation.MATH_OP, "What is 2 + 2?", 6, 0.1)

    view = latencies.view([big, small], "MATH_OP")
    assert [n.latency_ms for n in view] == [4000.0, 1000.0]
    assert latencies.view([big, small], "GENERAL_OP") == [big, small]  # not measured there: overall figures
    assert route_chunk(math_chunk, view, {"small": 2}, CONFIG).node_ids == ("small",)  # 3 s queued < 4 s
    assert route_chunk(math_chunk, [big, small], {"small": 2}, CONFIG).node_ids == ("big",)  # one figure: big


def _unmeasured(node_id: str, model: str) -> NodeRecord:
    return NodeRecord(NodeDescription(node_id, "127.0.0.1:1", model=model), fitness=0.5, latency_ms=None)


@pytest.mark.parametrize(
    ("nodes", "expected_ms"),
    [
        pytest.param([_unmeasured("big", Q15), _unmeasured("small", Q05)], {"big": 1500.0, "small": 500.0},
                     id="nothing-measured-default-stands-for-the-median-size"),
        pytest.param([_unmeasured("big", Q15), _judged("small", 400, 0.0, model=Q05)], {"big": 1200.0, "small": 400.0},
                     id="time-per-parameter-of-the-measured"),
        pytest.param([_unmeasured("big", Q15), _judged("small", 400, 0.0, model=Q05), _judged("x", 900, 0.0)],
                     {"big": 1200.0, "small": 400.0, "x": 900.0}, id="unknown-size-measured-kept"),
        pytest.param([_unmeasured("x", ""), _judged("small", 400, 0.0, model=Q05),
                      _judged("tiny", 100, 0.0, model=S135)], {"x": 250.0}, id="unknown-size-unmeasured-median-time"),
        pytest.param([_unmeasured("x", ""), _unmeasured("y", "")], {"x": 1000.0, "y": 1000.0},
                     id="no-sizes-no-measures-default"),
    ],
)
def test_an_unmeasured_node_is_expected_to_take_time_in_proportion_to_its_model_size(
        nodes: list[NodeRecord], expected_ms: dict[str, float]) -> None:
    prior = LatencyPrior(nodes, RouteConfig(default_latency_ms=1000.0))

    assert {n.node_id: prior(n) for n in nodes if n.node_id in expected_ms} == pytest.approx(expected_ms)


def test_a_fresh_network_sends_checked_arithmetic_to_a_small_fast_model_not_the_big_one() -> None:
    """The demo's first query: nothing measured, one 1.5B and two 0.5B nodes; '10% of 1000' is checked
    exactly, so one node answers it, and the 0.5B takes about a third of the 1.5B's time."""
    nodes = [_unmeasured("a-big", Q15), _unmeasured("b-small", Q05), _unmeasured("c-small", Q05)]
    chunk = Chunk("c1", Operation.MATH_OP, "Calculate 10% interest on $1000", 6, 0.55)

    assert route_chunk(chunk, nodes, {}, CONFIG, count=redundancy_for(chunk, CONFIG, checked=True)).node_ids == (
        "b-small",)
    assert "a-big" in route_chunk(SEARCH_HIGH, nodes, {}, CONFIG).node_ids  # facts still get the strongest model
