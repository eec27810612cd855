"""Stage 2: choose the nodes for a chunk.

score = latency_weight x normalized latency + fitness_weight x (1 - fitness), lowest best: the seed's
formula (``seed_score``), with three refinements so that it serves answers that are right. No I/O.

1. Latency is normalised among this chunk's candidates. A node's expected time is its measured
   whole-answer time (until it has one, the measured nodes' median time per parameter times its model's
   size, ``LatencyPrior``) times one plus the answers queued on it (a node serves one generation at a
   time, so busy nodes yield to idle ones), divided by the worst expected time among the nodes that may
   take this chunk: excluded (already tried) and quarantined nodes are left out before normalising, so
   a slow node nobody would pick does not make the others look fast. A node's time is its average at the
   chunk's operation once it has answered one (``OperationLatencies``, in the coordinator's memory), else
   its overall average from the registry (``NodeRecord.latency_ms``). The chunk's expected answer length
   would scale every candidate's time by the same factor and cancels in the ratio: it changes no ranking,
   so it is not applied. (It would where nodes were measured on answers of different lengths; that needs
   the registry to keep tokens per answer, ``NodeAnswer.tokens``.)
2. Fitness weighs as much as its evidence allows (``evidence_weights``). With no judged answer at the
   operation the seed's 0.7/0.3 decides as it always did. As the best-known candidate's trials at the
   operation grow, the fitness weight moves from ``fitness_weight`` toward ``fitness_weight_cap``,
   w = base + (cap - base) x trials / (trials + evidence_half_trials), and the latency weight gives up
   the same amount. One pair of weights per decision, the same for every candidate: weights that
   differed per node would let a node with evidence pay less for the same latency than a newcomer,
   which is a bias, not evidence. A newcomer's uncertainty is exploration's business (Thompson samples
   its wide posterior, UCB adds its bonus). With the defaults, at 20 trials a node proven right (0.9)
   beats a 3x faster node proven wrong (0.3), and between two nodes equally right the faster still wins.
3. Truth from diversity (``choose_nodes``). A chunk no exact check can judge (every operation but
   arithmetic, ``OPERATIONS[op].checked_exactly``) that gets two or more nodes gets the strongest
   available model among them, and distinct models before a second copy of one: two copies of a model
   agreeing prove less than two models agreeing. Strength (``strongest_model``) is the model's pooled
   success rate at the operation (successes / trials, the evidence fitness is made of, without its speed
   bonus) once every candidate model has ``strength_min_trials`` judged answers there, else its size
   read from its name (1.5b > 0.5b > 270m > 135m; unknown sizes rank last); ties go to the model whose
   best node scores best. "Available" is live, not excluded, not quarantined; a busy strongest node is
   still taken (its queue counts in its score, and hedging races it if it runs late). The other slots go
   by score. Checked chunks (the exact value judges any single answer) are chosen by score alone, as
   before; so are retries and hedges, which ask for one node.

Ties break on node id, so routing is reproducible. Past ``RouteConfig.shortlist_size`` live nodes a
``Shortlist`` chooses which of them a decision scores, so that it costs about the same at 10,000 nodes
as at 40.
"""

from __future__ import annotations

import functools
import heapq
import math
import random
import re
import statistics
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace

from dellm.coordinator.config import RouteConfig
from dellm.coordinator.errors import NoNodesAvailableError
from dellm.coordinator.pipeline.operations import OPERATIONS, Operation, asks_for_a_fact
from dellm.coordinator.registry.base import NodeTable
from dellm.coordinator.stats import wilson_interval
from dellm.coordinator.types import Assignment, Chunk, NodeRecord
from dellm.protos.wire import NodeState

# "1.5b", "0.5B", "270m", "135M": a parameter count in a model's name (not "2.5" in "qwen2.5", "4" in "q4_k_m").
_MODEL_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)([bm])(?![a-z])", re.I)
_UNITS = {"b": 1e9, "m": 1e6}


def redundancy_for(chunk: Chunk, config: RouteConfig, *, checked: bool = False) -> int:
    """How many nodes a chunk goes to: ``checked_redundancy`` when the coordinator computes its value itself
    (``checked``); ``redundancy`` when it is complex enough to be worth it, or when it asks for a fact nothing
    can check (``asks_for_a_fact``: a second model is the only way to catch a wrong one); one otherwise."""
    if checked:
        return max(1, config.checked_redundancy)
    if chunk.complexity >= config.redundancy_threshold or asks_for_a_fact(chunk.text, chunk.operation):
        return config.redundancy
    return 1


def checked_exactly(operation: str) -> bool:
    """Can the coordinator compute this operation's right answer itself (arithmetic)?"""
    try:
        return OPERATIONS[Operation(operation)].checked_exactly
    except ValueError:  # "" or an unknown operation: nothing checks it
        return False


def effective_fitness(
    node: NodeRecord, operation: str, total_trials: int, config: RouteConfig, rng: random.Random | None
) -> float:
    """The fitness routing uses: the node's fitness at ``operation``, made optimistic (UCB) or sampled
    (Thompson) so that nodes with little evidence still get tried."""
    stats = node.op_stats.get(operation)
    trials = stats.trials if stats is not None else 0
    if config.exploration == "ucb":
        bonus = config.exploration_weight * math.sqrt(math.log(1 + total_trials) / (1 + trials))
        return min(1.0, node.fitness_for(operation) + bonus)
    if config.exploration == "thompson":
        successes = stats.successes if stats is not None else 0
        prior = config.thompson_prior_strength
        fitness = min(0.99, max(0.01, node.fitness))
        failures = max(0, trials - successes)  # never negative, whatever a registry holds
        return (rng or random.Random(0)).betavariate(prior * fitness + successes, prior * (1 - fitness) + failures)
    return node.fitness_for(operation)


def quarantined(node: NodeRecord, operation: str, config: RouteConfig) -> bool:
    stats = node.op_stats.get(operation)
    return (stats is not None and stats.trials >= config.quarantine_min_trials
            and stats.fitness < config.quarantine_fitness)


def trials_at(node: NodeRecord, operation: str) -> int:
    stats = node.op_stats.get(operation)
    return stats.trials if stats is not None else 0


class LatencyPrior:
    """The whole-answer time assumed for a node not measured yet, by the size of its model.

    On a CPU, decoding is bound by reading the weights, so a model's time per token grows about in
    proportion to its parameters (on this project's 2-core machine, one thread: the 1.5B coder writes 11
    tokens/s, the 0.5B 35). So an unmeasured node of known size is given the measured nodes' median time per
    parameter, times its size; before any node of known size is measured, ``default_latency_ms`` stands for
    the median size among ``nodes``. A node whose name gives no size gets the median measured time (the
    default before any). Without this, a fresh network's first chunks went to its slowest model: every node
    looked alike, and ties went to the strongest."""

    def __init__(self, nodes: Iterable[NodeRecord], config: RouteConfig) -> None:
        nodes = list(nodes)
        measured = [(n.latency_ms, model_size(n.info.model)) for n in nodes if n.latency_ms is not None]
        self.flat = statistics.median(ms for ms, _ in measured) if measured else config.default_latency_ms
        per_size = [ms / size for ms, size in measured if size > 0]
        sizes = [size for n in nodes if (size := model_size(n.info.model)) > 0]
        self._per_size: float | None = (statistics.median(per_size) if per_size
                                        else config.default_latency_ms / statistics.median(sizes) if sizes
                                        else None)

    def __call__(self, node: NodeRecord) -> float:
        """``node``'s measured time, else the time assumed for its size."""
        measured = node.latency_ms
        if measured is not None:
            return measured
        size = model_size(node.info.model)
        return self._per_size * size if size > 0 and self._per_size is not None else self.flat


def expected_latencies(nodes: Iterable[NodeRecord], in_flight: Mapping[str, int],
                       prior: Callable[[NodeRecord], float]) -> dict[str, float]:
    """node id -> expected time for one more answer: its whole-answer time (``prior``'s guess until
    measured) times one plus the answers already queued on it."""
    return {n.node_id: prior(n) * (1 + in_flight.get(n.node_id, 0)) for n in nodes}


def seed_score(expected_latency: float, worst_latency: float, fitness: float, config: RouteConfig) -> float:
    """The seed's score, lower is better: latency_weight x normalized latency + fitness_weight x (1 - fitness)."""
    return config.latency_weight * expected_latency / worst_latency + config.fitness_weight * (1.0 - fitness)


def evidence_weights(trials: int, config: RouteConfig) -> tuple[float, float]:
    """(latency weight, fitness weight) for a decision whose best-known candidate has ``trials`` judged
    answers at the operation: the seed's weights at 0 trials, the fitness weight moving toward
    ``fitness_weight_cap`` as trials / (trials + evidence_half_trials), the latency weight giving up
    what it gains."""
    room = config.fitness_weight_cap - config.fitness_weight
    if trials <= 0 or room <= 0:
        return config.latency_weight, config.fitness_weight
    shift = min(room * trials / (trials + max(config.evidence_half_trials, 1e-9)),
                config.latency_weight)  # the latency weight never goes negative
    return config.latency_weight - shift, config.fitness_weight + shift


@functools.lru_cache(maxsize=1024)  # a decision is ~60 us; building a config is ~10 of them
def _weighted(config: RouteConfig, trials: int) -> RouteConfig:
    """``config`` with the weights ``evidence_weights`` gives for ``trials`` (the same object when unchanged)."""
    latency_weight, fitness_weight = evidence_weights(trials, config)
    if (latency_weight, fitness_weight) == (config.latency_weight, config.fitness_weight):
        return config
    return replace(config, latency_weight=latency_weight, fitness_weight=fitness_weight)


def score_nodes(
    nodes: Iterable[NodeRecord], in_flight: Mapping[str, int], config: RouteConfig, operation: str = "",
    rng: random.Random | None = None, exclude: Collection[str] = frozenset(),
) -> list[tuple[float, str]]:
    """(score, node_id) for each live node not in ``exclude``; lower is better. Quarantined nodes are
    left out while any other such node remains, but for a rare probe (with ``rng``) to see if they
    recovered. Latency is normalised among the nodes scored; the weights follow the evidence at
    ``operation`` (see the module's notes)."""
    return [(score, node.node_id) for score, node in _scored(nodes, in_flight, config, operation, rng, exclude)]


def _scored(
    nodes: Iterable[NodeRecord], in_flight: Mapping[str, int], config: RouteConfig, operation: str,
    rng: random.Random | None, exclude: Collection[str],
) -> list[tuple[float, NodeRecord]]:
    live = [n for n in nodes if n.state == NodeState.UP]
    prior = LatencyPrior(live, config)  # every measured live node informs the guess for an unmeasured one
    candidates = [n for n in live if n.node_id not in exclude]
    probe = rng.random() < config.quarantine_probe_rate if rng is not None else False
    trusted = [n for n in candidates if probe or not quarantined(n, operation, config)]
    candidates = trusted or candidates
    total_trials = (sum(trials_at(n, operation) for n in candidates)
                    if config.exploration == "ucb" else 0)  # only UCB's bonus reads it
    weights = _weighted(config, max((trials_at(n, operation) for n in candidates), default=0))
    expected = expected_latencies(candidates, in_flight, prior)
    worst = max(expected.values(), default=1.0) or 1.0
    return [
        (seed_score(expected[n.node_id], worst, effective_fitness(n, operation, total_trials, config, rng), weights),
         n)
        for n in candidates
    ]


@functools.lru_cache(maxsize=4096)  # read on every routing decision; a network has few model names
def model_size(model: str) -> float:
    """Parameters read from a model's name ("qwen2.5-coder-1.5b-instruct" -> 1.5e9, "gemma-3-270m" ->
    2.7e8); 0.0 when the name gives none."""
    return max((float(number) * _UNITS[unit.lower()] for number, unit in _MODEL_SIZE.findall(model)), default=0.0)


def model_of(node: NodeRecord) -> str:
    """The model a node runs; a node that names none counts as a model of its own (it may be anything)."""
    return node.info.model or f"<unnamed {node.node_id}>"


def strongest_model(ranked: Sequence[NodeRecord], operation: str, config: RouteConfig) -> str | None:
    """The strongest model among ``ranked`` (best score first). Once every model there has
    ``strength_min_trials`` judged answers at ``operation``, by its pooled success rate there (successes /
    trials: the evidence fitness is built from, without the speed bonus); until then by the size in its
    name. The other measure breaks ties, then the model whose best node ranks first."""
    strengths = _model_strengths(ranked, operation, config)
    return max(strengths, key=strengths.__getitem__) if strengths else None  # max keeps the first of equals


def clearly_strongest_model(records: Sequence[NodeRecord], operation: str, config: RouteConfig) -> str | None:
    """The model among ``records`` that is clearly stronger than every other one there; None when one model
    alone is there, or none stands out. Clearly: once every model has ``strength_min_trials`` judged answers at
    ``operation``, a success rate whose 95% interval lies above every other model's; else (or when the
    evidence does not separate them), a larger size read from its name. Weaker evidence would let a few
    slow answers of a big model, cut and judged wrong, make it look weaker than a small one at facts."""
    trials, successes, sizes = _model_tallies(records, operation)
    if len(trials) < 2:
        return None
    if all(t >= max(config.strength_min_trials, 1) for t in trials.values()):
        best = max(trials, key=lambda m: successes[m] / trials[m])
        low = _interval(successes[best], trials[best])[0]
        if all(low > _interval(successes[m], trials[m])[1] for m in trials if m != best):
            return best
    by_size = sorted(trials, key=sizes.__getitem__, reverse=True)
    return by_size[0] if sizes[by_size[0]] > sizes[by_size[1]] else None


def _model_tallies(nodes: Sequence[NodeRecord], operation: str
                   ) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
    """Per model, in the order of ``nodes`` (in a ranking, a model's first node is its best): judged answers
    and successes at ``operation`` pooled over its nodes, and the size read from its name."""
    trials: dict[str, int] = {}
    successes: dict[str, int] = {}
    sizes: dict[str, float] = {}
    for node in nodes:
        model = model_of(node)
        stats = node.op_stats.get(operation)
        trials[model] = trials.get(model, 0) + (stats.trials if stats is not None else 0)
        successes[model] = successes.get(model, 0) + (stats.successes if stats is not None else 0)
        sizes.setdefault(model, model_size(node.info.model))
    return trials, successes, sizes


def _interval(successes: int, trials: int) -> tuple[float, float]:
    """The 95% Wilson interval of a success rate; all of [0, 1] before any trial."""
    return wilson_interval(successes, trials) or (0.0, 1.0)


def _model_strengths(nodes: Sequence[NodeRecord], operation: str, config: RouteConfig
                     ) -> dict[str, tuple[float, float]]:
    """Each model's strength key among ``nodes``, in their order: (success rate, size) once every model has
    ``strength_min_trials`` judged answers at ``operation`` (pooled over its nodes), else (size, success rate)."""
    trials, successes, sizes = _model_tallies(nodes, operation)
    by_evidence = bool(trials) and all(t >= max(config.strength_min_trials, 1) for t in trials.values())

    def strength(model: str) -> tuple[float, float]:
        rate = successes[model] / trials[model] if trials[model] else 0.0
        return (rate, sizes[model]) if by_evidence else (sizes[model], rate)

    return {model: strength(model) for model in trials}


def choose_nodes(ranked: Sequence[NodeRecord], wanted: int, operation: str, config: RouteConfig) -> tuple[str, ...]:
    """``wanted`` node ids from ``ranked`` (best score first), in rank order: the best node of the strongest
    model, then the best nodes of models not chosen yet, then second copies."""
    if not ranked:
        return ()
    strongest = strongest_model(ranked, operation, config)
    chosen = {next(n.node_id for n in ranked if model_of(n) == strongest)}
    models = {strongest}
    for distinct_only in (True, False):  # other models first, then second copies
        for node in ranked:
            if len(chosen) < wanted and node.node_id not in chosen and not (
                    distinct_only and model_of(node) in models):
                chosen.add(node.node_id)
                models.add(model_of(node))
    return tuple(n.node_id for n in ranked if n.node_id in chosen)


def route_chunk(
    chunk: Chunk,
    nodes: Iterable[NodeRecord],
    in_flight: Mapping[str, int],
    config: RouteConfig,
    *,
    count: int | None = None,
    exclude: frozenset[str] = frozenset(),
    rng: random.Random | None = None,
) -> Assignment:
    """Pick ``count`` (default: by complexity) distinct nodes, never one from ``exclude``."""
    wanted = redundancy_for(chunk, config) if count is None else count
    operation = chunk.operation.value
    scored = _scored(nodes, in_flight, config, operation, rng, exclude)
    if not scored:
        raise NoNodesAvailableError(f"no live node can take chunk {chunk.chunk_id}")
    diverse = config.diversity and not OPERATIONS[chunk.operation].checked_exactly
    if not diverse or wanted < 2:
        chosen = heapq.nsmallest(wanted, scored, key=lambda s: (s[0], s[1].node_id))  # ties: node id
        return Assignment(chunk_id=chunk.chunk_id, node_ids=tuple(n.node_id for _, n in chosen))
    ranked = [n for _, n in sorted(scored, key=lambda s: (s[0], s[1].node_id))]
    return Assignment(chunk_id=chunk.chunk_id, node_ids=choose_nodes(ranked, wanted, operation, config))


class OperationLatencies:
    """Each node's moving average of whole-answer time at each operation, kept in memory by the coordinator
    (the registry keeps one average per node). A node's time differs by operation more than by anything
    else: a 1.5B coder on one thread names a capital in about 1.3 s but takes about 5 s to write one line of
    code after its few-shot examples, so a single average made it look fast for arithmetic and slow for
    facts. ``view`` gives routing each node's record with the latency at the chunk's operation once measured
    there (its overall average until then)."""

    def __init__(self, alpha: float = 0.3) -> None:
        self._alpha = alpha  # weight of the newest answer, as for the registry's average
        self._ms: dict[tuple[str, str], float] = {}

    def record(self, node_id: str, operation: str, latency_ms: float) -> None:
        if not math.isfinite(latency_ms) or latency_ms < 0:
            return
        old = self._ms.get((node_id, operation))
        self._ms[node_id, operation] = latency_ms if old is None else old + self._alpha * (latency_ms - old)

    def get(self, node_id: str, operation: str) -> float | None:
        return self._ms.get((node_id, operation))

    def view(self, nodes: Iterable[NodeRecord], operation: str) -> list[NodeRecord]:
        out = []
        for node in nodes:
            at_operation = self._ms.get((node.node_id, operation))
            out.append(node if at_operation is None else replace(node, latency_ms=at_operation))
        return out


class Shortlist:
    """The candidates one routing decision scores when the network is too large to score whole.

    Per operation type it keeps the live nodes ranked by their deterministic score (measured latency
    and fitness at that operation, weighted by the evidence there; quarantined nodes last), rebuilt when
    the table has changed and the ranking is older than ``shortlist_refresh_s``. A decision walks the
    ranking for the ``shortlist_size`` best idle nodes (the busy ones met on the way come too: their
    queue is counted when they are scored) and adds ``shortlist_explorers`` nodes drawn at random from
    the whole table, so a node ranked low, or one that joined after the last rebuild, still gets tried.
    For an operation no exact check judges (see ``RouteConfig.diversity``) it also brings the best-ranked
    node of each of the ``redundancy`` strongest models, so that the strongest model can be chosen
    however it ranks. The scoring itself, exploration included, is ``score_nodes``'s, on those candidates.
    """

    def __init__(self, config: RouteConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        # operation -> (table version, built, ids by score, best node of each model by strength)
        self._rankings: dict[str, tuple[int, float, list[str], list[str]]] = {}

    def candidates(
        self, table: NodeTable, operation: str, in_flight: Mapping[str, int], exclude: Collection[str] = (),
        rng: random.Random | None = None,
    ) -> list[NodeRecord]:
        config = self._config
        if len(table) <= config.shortlist_size + len(exclude):
            return list(table)
        ranking, strong = self._ranking(table, operation)
        chosen: dict[str, NodeRecord] = {}
        idle = 0
        for node_id in ranking:
            node = table.get(node_id)
            if node is None or node_id in exclude:
                continue
            chosen[node_id] = node
            idle += not in_flight.get(node_id)
            if idle >= config.shortlist_size:
                break
        for node in table.sample(rng or random.Random(0), config.shortlist_explorers):
            if node.node_id not in exclude:
                chosen.setdefault(node.node_id, node)
        if config.diversity and not checked_exactly(operation):
            strongest = [table.get(i) for i in strong if i not in exclude]
            for node in [n for n in strongest if n is not None][:config.redundancy]:
                chosen.setdefault(node.node_id, node)
        return list(chosen.values())

    def _ranking(self, table: NodeTable, operation: str) -> tuple[list[str], list[str]]:
        now = self._clock()
        cached = self._rankings.get(operation)
        if cached is not None and (cached[0] == table.version or now - cached[1] < self._config.shortlist_refresh_s):
            return cached[2], cached[3]
        config = self._config
        nodes = list(table)
        prior = LatencyPrior(nodes, config)
        worst = max(map(prior, nodes), default=prior.flat) or 1.0
        weights = _weighted(config, max((trials_at(n, operation) for n in nodes), default=0))

        def key(node: NodeRecord) -> tuple[bool, float, str]:
            score = seed_score(prior(node), worst, node.fitness_for(operation), weights)
            return quarantined(node, operation, config), score, node.node_id

        ranked = sorted(nodes, key=key)
        strong: list[str] = []
        trusted = ([n for n in ranked if not quarantined(n, operation, config)]
                   if config.diversity and not checked_exactly(operation) else [])
        while trusted and len(strong) < config.redundancy:  # the best node of each strongest model in turn
            model = strongest_model(trusted, operation, config)
            strong.append(next(n.node_id for n in trusted if model_of(n) == model))
            trusted = [n for n in trusted if model_of(n) != model]
        ranking = [node.node_id for node in ranked]
        self._rankings[operation] = (table.version, now, ranking, strong)
        return ranking, strong
