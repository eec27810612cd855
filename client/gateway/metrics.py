"""Prometheus metrics at ``/metrics``, with prometheus-client, in a registry of the gateway's own.

Three sources. The network's queries, from every client, as the coordinator's Watch feed reports them
(from an older coordinator without it, the queries of this gateway): :meth:`GatewayMetrics.query_summary`.
The HTTP requests this gateway serves (a :class:`QueryObserver`). And the coordinator's node list, read at
scrape time by :class:`NodeCollector` from the status board's latest ListNodes reply (so a node that is
gone leaves no stale series behind).

    dellm_queries_total{outcome}                        queries finished, by how they ended
    dellm_query_seconds                                 end to end, as the coordinator's servicer measured it
    dellm_stage_seconds{stage}                          each pipeline stage, as the coordinator timed it
    dellm_time_to_first_token_seconds                   until the first token of any node
    dellm_verdicts_total{source,verdict}                node answers judged, by what judged them
    dellm_redispatches_total{kind}                      retry: a failed node's work moved; hedge: a slow node raced
    dellm_gateway_requests_total{api,outcome}           HTTP requests that asked a question, by API and outcome
    dellm_gateway_requests_in_flight                    ... being answered now
    dellm_gateway_request_seconds{api}                  ... end to end, as the gateway measured it
    dellm_node_fitness{node_id,name,operation}          operation "ALL" is the overall fitness
    dellm_node_quarantined{node_id,name,operation}      1 when kept from that work
    dellm_node_in_flight{node_id,name}
    dellm_node_latency_seconds{node_id,name}            the registry's moving average of whole answers
    dellm_node_state{node_id,name,state}                1 for the node's state (up, down, gone)
    dellm_node_answers_total, dellm_node_failures_total, dellm_node_canaries_total{result}
    dellm_nodes{state}                                  how many nodes are in each state
    dellm_coordinator_up                                1 when the last ListNodes succeeded
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dellm.client.gateway.session import QuerySummary
from dellm.protos import dellm_pb2

# Small-model answers on CPUs: from milliseconds (scripted nodes) to minutes (big word problems).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
NODE_STATES = ("up", "down", "gone")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class GatewayMetrics:
    """The gateway's metrics; ``render()`` is the /metrics body."""

    def __init__(self, nodes: Callable[[], Sequence[dellm_pb2.NodeStatus]],
                 coordinator_up: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queries = Counter("dellm_queries", "Queries the network finished, by how they ended", ["outcome"],
                               registry=r)
        self.query_seconds = Histogram("dellm_query_seconds", "End-to-end query time, measured by the coordinator",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram("dellm_stage_seconds", "Time of each pipeline stage, timed by the coordinator",
                                       ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_token_seconds = Histogram(
            "dellm_time_to_first_token_seconds", "Time from the question to the first token any node streamed",
            buckets=LATENCY_BUCKETS, registry=r)
        self.verdicts = Counter("dellm_verdicts", "Node answers judged, by the evidence that judged them and verdict",
                                ["source", "verdict"], registry=r)
        self.redispatches = Counter("dellm_redispatches",
                                    "Chunks sent to one more node: retry (a node failed) or hedge (a node was slow)",
                                    ["kind"], registry=r)
        self.requests = Counter("dellm_gateway_requests", "HTTP requests that asked a question, by API and outcome",
                                ["api", "outcome"], registry=r)
        self.in_flight = Gauge("dellm_gateway_requests_in_flight", "HTTP requests being answered now", registry=r)
        self.request_seconds = Histogram("dellm_gateway_request_seconds",
                                         "HTTP requests that asked a question, end to end, measured by the gateway",
                                         ["api"], buckets=LATENCY_BUCKETS, registry=r)
        r.register(NodeCollector(nodes, coordinator_up))

    # --- the network's queries (the status board's feed) -----------------------------------------------------

    def query_summary(self, summary: dellm_pb2.QuerySummary) -> None:
        self.queries.labels(summary.outcome or "failed").inc()
        if summary.first_token_ms:
            self.first_token_seconds.observe(summary.first_token_ms / 1000)
        if summary.retries:
            self.redispatches.labels("retry").inc(summary.retries)
        if summary.hedges:
            self.redispatches.labels("hedge").inc(summary.hedges)
        if not summary.HasField("final"):
            return
        self.query_seconds.observe(summary.total_ms / 1000)
        for timing in summary.final.timings:
            self.stage_seconds.labels(timing.stage).observe(timing.ms / 1000)
        for reward in summary.final.rewards:
            self.verdicts.labels(reward.source or "none", dellm_pb2.Verdict.Name(reward.verdict)).inc()

    # --- this gateway's HTTP requests (QueryObserver) --------------------------------------------------------

    def query_started(self) -> None:
        self.in_flight.inc()

    def query_finished(self, summary: QuerySummary) -> None:
        self.in_flight.dec()
        self.requests.labels(summary.api, summary.outcome).inc()
        self.request_seconds.labels(summary.api).observe(summary.seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class NodeCollector(Collector):
    """Per-node figures from the coordinator's latest ListNodes reply, read at scrape time."""

    def __init__(self, nodes: Callable[[], Sequence[dellm_pb2.NodeStatus]], coordinator_up: Callable[[], bool]) -> None:
        self._nodes = nodes
        self._up = coordinator_up

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the series depend on the nodes: nothing to declare ahead

    def collect(self) -> Iterator[Metric]:
        ids = ["node_id", "name"]
        fitness = GaugeMetricFamily("dellm_node_fitness", "Node fitness, overall (operation ALL) and per operation",
                                    labels=[*ids, "operation"])
        quarantined = GaugeMetricFamily("dellm_node_quarantined", "1 when the node is kept from this operation",
                                        labels=[*ids, "operation"])
        in_flight = GaugeMetricFamily("dellm_node_in_flight", "Chunks the node is answering now", labels=ids)
        latency = GaugeMetricFamily("dellm_node_latency_seconds", "Moving average of the node's whole-answer time",
                                    labels=ids)
        state = GaugeMetricFamily("dellm_node_state", "1 for the node's current state", labels=[*ids, "state"])
        answers = CounterMetricFamily("dellm_node_answers", "Answers the node gave", labels=ids)
        failures = CounterMetricFamily("dellm_node_failures", "Streams of the node that failed", labels=ids)
        canaries = CounterMetricFamily("dellm_node_canaries", "Canary chunks (known answers) by result",
                                       labels=[*ids, "result"])
        counts = GaugeMetricFamily("dellm_nodes", "Nodes the coordinator knows, by state", labels=["state"])
        by_state = dict.fromkeys(NODE_STATES, 0)
        for node in self._nodes():
            labels = [node.info.node_id, node.info.name or node.info.model]
            fitness.add_metric([*labels, "ALL"], node.fitness)
            for op in node.operations:
                name = dellm_pb2.Operation.Name(op.operation)
                fitness.add_metric([*labels, name], op.fitness)
                quarantined.add_metric([*labels, name], 1.0 if op.quarantined else 0.0)
            in_flight.add_metric(labels, node.in_flight)
            latency.add_metric(labels, node.latency_ms / 1000)
            for known in sorted({*NODE_STATES, node.state}):
                state.add_metric([*labels, known], 1.0 if known == node.state else 0.0)
            answers.add_metric(labels, node.answers)
            failures.add_metric(labels, node.failures)
            canaries.add_metric([*labels, "passed"], node.canaries_passed)
            canaries.add_metric([*labels, "failed"], node.canaries_failed)
            by_state[node.state] = by_state.get(node.state, 0) + 1
        for known, count in sorted(by_state.items()):
            counts.add_metric([known], count)
        up = GaugeMetricFamily("dellm_coordinator_up", "1 when the gateway's last ListNodes call succeeded",
                               value=1.0 if self._up() else 0.0)
        yield from (fitness, quarantined, in_flight, latency, state, answers, failures, canaries, counts, up)
