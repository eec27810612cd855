# PYTHON_ARGCOMPLETE_OK
"""``dellm-coordinator``: parse flags, build the coordinator, serve."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import replace
from pathlib import Path

from dellm.coordinator.config import (
    WARM_BUDGET_S,
    AdmissionConfig,
    CoordinatorConfig,
    DecomposeConfig,
    DispatchConfig,
    HealthConfig,
    RouteConfig,
    SynthesisConfig,
)
from dellm.coordinator.core import Coordinator
from dellm.coordinator.discovery.base import Discovery
from dellm.coordinator.discovery.static import StaticDiscovery
from dellm.coordinator.errors import RegistryUnavailableError
from dellm.coordinator.grpc_server import serve
from dellm.coordinator.pipeline.planner import ModelPlanner
from dellm.coordinator.pipeline.synthesize import ModelSynthesizer, Synthesizer, TemplateSynthesizer
from dellm.coordinator.registry import RegistryWriteError, open_registry
from dellm.node.selfcheck import GenerationCheckError
from dellm.protos import MissingExtraError, autocomplete, import_extra, version_line
from dellm.protos.cli_config import add_config_argument, parse_with_config
from dellm.protos.cli_logging import add_log_level_argument, configure_logging
from dellm.protos.security import SecurityError, add_security_arguments, security_from_arguments
from dellm.protos.transport import ListenError

DEFAULT_SYNTH_MODEL = "qwen2.5-coder-0.5b-instruct"


def default_registry_path() -> Path:
    state = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return state / "dellm" / "coordinator.sqlite3"


def build_model_stages(
    spec: str, backend: str, threads: int | None, config: CoordinatorConfig, planner: str
) -> tuple[Synthesizer, ModelPlanner | None]:
    """The synthesizer and (with --planner model) the planner, sharing one model and its lock."""
    if spec == "none":
        if planner == "model":
            raise ValueError("--planner model needs a coordinator model: give --synth-model")
        return TemplateSynthesizer(), None
    from dellm.node.backends.factory import create_backend
    from dellm.node.models import resolve_model

    model = resolve_model(spec)
    if backend == "llama_cpp":
        from dellm.node.selfcheck import require_generation

        require_generation(model.path, threads=threads)  # in a child process: a crashing build stops here
    instruct = model.instruct
    loaded = create_backend(backend, model_path=model.path, model_name=model.name, instruct=instruct,
                            n_threads=threads)
    lock = asyncio.Lock()
    return (ModelSynthesizer(loaded, config.synthesis, lock),
            ModelPlanner(loaded, config.decompose, lock=lock) if planner == "model" else None)


def build_discovery(args: argparse.Namespace) -> list[Discovery]:
    if args.discovery == "mdns":
        import_extra("zeroconf", "lan", "--discovery mdns (the default)")
        from dellm.coordinator.discovery.mdns import MdnsDiscovery

        return [MdnsDiscovery(args.cluster, args.interface)]
    if args.discovery == "static":
        addresses = [a.strip() for a in args.static_nodes.split(",") if a.strip()]
        if not addresses:
            raise SystemExit("dellm-coordinator: --discovery static needs --static-nodes HOST:PORT[,HOST:PORT...]")
        return [StaticDiscovery(addresses, interval=args.health_interval * 5)]
    return []


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dellm-coordinator", description="Run a DELLM coordinator.")
    parser.add_argument("--version", action="version", version=version_line("dellm-coordinator"))
    parser.add_argument("--listen", default=os.environ.get("DELLM_COORDINATOR_LISTEN", "127.0.0.1:50050"),
                        help="HOST:PORT to serve on (port 0 picks a free port; default %(default)s)")
    parser.add_argument("--synth-model", default=DEFAULT_SYNTH_MODEL,
                        help="catalogue name or .gguf path of the synthesis model, or 'none' for the template "
                             "(default %(default)s)")
    parser.add_argument("--synth-backend", default="llama_cpp", choices=["llama_cpp", "transformers"])
    parser.add_argument("--planner", choices=["rules", "model"], default="rules",
                        help="plan queries with the rules (default) or ask the coordinator's model, falling back "
                             "to the rules when its plan is invalid")
    parser.add_argument("--synth-threads", type=int, default=None, help="CPU threads for the synthesis model")
    parser.add_argument("--synth-budget", type=float, default=SynthesisConfig.time_budget_s, metavar="SECONDS",
                        help="synthesis time budget; past it the template answer is served (0: none; "
                             "default %(default)s)")
    parser.add_argument("--registry", default=None,
                        help="where nodes, fitness and queries live: a SQLite file, or redis://HOST:PORT/DB to share "
                             f"them between coordinators (default {default_registry_path()})")
    parser.add_argument("--redundancy-threshold", type=float, default=RouteConfig.redundancy_threshold,
                        help="chunks at least this complex go to two nodes (default %(default)s)")
    parser.add_argument("--redundancy", type=int, default=RouteConfig.redundancy,
                        help="nodes per chunk at or above the complexity threshold (default %(default)s)")
    parser.add_argument("--exploration", choices=["ucb", "thompson", "none"], default=RouteConfig.exploration,
                        help="how routing tries nodes with little evidence (default %(default)s)")
    parser.add_argument("--seed", type=int, default=RouteConfig.seed, help="random seed of Thompson sampling")
    parser.add_argument("--latency-weight", type=float, default=RouteConfig.latency_weight,
                        help="weight of normalized latency in the routing score (the seed's %(default)s)")
    parser.add_argument("--fitness-weight", type=float, default=RouteConfig.fitness_weight,
                        help="weight of (1 - fitness) in the routing score (the seed's %(default)s)")
    parser.add_argument("--canary-interval", type=float, default=CoordinatorConfig.canary_interval_s,
                        help="mean seconds between canary chunks with known answers; 0 disables (default %(default)s)")
    parser.add_argument("--max-queries", type=int, default=CoordinatorConfig.max_queries,
                        help="queries in flight at once before RESOURCE_EXHAUSTED (default %(default)s)")
    parser.add_argument("--max-queries-per-client", type=int, default=CoordinatorConfig.max_queries_per_client,
                        help="the same, per client address (default %(default)s)")
    parser.add_argument("--accept-labels", action="store_true",
                        help="benchmark mode: use AskRequest.reference_answer as ground truth for rewards")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per chunk answer")
    parser.add_argument("--samples", type=int, default=DispatchConfig.samples,
                        help="answers per word problem at most: a plausible greedy program settles it alone, else the "
                             "rest vote (self-consistency; 1: one greedy program) (default %(default)s)")
    parser.add_argument("--escalation-nodes", type=int, default=DispatchConfig.escalation_nodes,
                        help="more nodes asked when the exact value contradicts every answer (default %(default)s)")
    parser.add_argument("--escalation-budget", type=float, default=DispatchConfig.escalation_budget_s,
                        metavar="SECONDS",
                        help="seconds a query waits for those nodes when it has the checked value to serve; "
                             "0: wait for them (default %(default)s)")
    parser.add_argument("--programs", action=argparse.BooleanOptionalAction, default=CoordinatorConfig.program_aided,
                        help="math chunks are answered with a short program the coordinator runs in its sandbox, "
                             "and judged by what it computes (default: on)")
    parser.add_argument("--max-chunks", type=int, default=DecomposeConfig.max_chunks,
                        help="chunks per query; more parts are merged into the last (default %(default)s)")
    parser.add_argument("--cluster", default="default", help="admit only nodes of this cluster (default %(default)s)")
    parser.add_argument("--discovery", choices=["mdns", "static", "none"], default="mdns",
                        help="find nodes by mDNS on the LAN (default), from --static-nodes, or only by Join")
    parser.add_argument("--static-nodes", default="", help="comma-separated HOST:PORT list for --discovery static")
    parser.add_argument("--interface", default=None, help="address for mDNS to bind to (default: every interface)")
    parser.add_argument("--health-interval", type=float, default=HealthConfig.interval_s,
                        help="seconds between health checks of each node (default %(default)s)")
    parser.add_argument("--health-misses", type=int, default=HealthConfig.max_missed,
                        help="missed checks before a node is marked down (default %(default)s)")
    parser.add_argument("--node-ttl", type=float, default=HealthConfig.ttl_s,
                        help="seconds down before a node leaves the live set (default %(default)s)")
    parser.add_argument("--probation-canaries", type=int, default=AdmissionConfig.probation_canaries,
                        help="canaries a new node must answer right before it gets work; 0: none (default %(default)s)")
    parser.add_argument("--warm-budget", type=float, default=WARM_BUDGET_S,
                        help="seconds an admitted node may spend evaluating the system prompts into its prompt "
                             "cache before it gets work; 0: none (default %(default)s)")
    parser.add_argument("--max-nodes", type=int, default=AdmissionConfig.max_nodes,
                        help="node ids held, up or down; new ones past it are refused (default %(default)s)")
    parser.add_argument("--node-retention", type=float, default=AdmissionConfig.retention_s,
                        help="seconds gone before a node is pruned, its fitness archived (default %(default)s)")
    add_log_level_argument(parser)
    add_config_argument(parser)
    add_security_arguments(parser, server=True)
    autocomplete(parser)
    return parse_with_config(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    try:
        security = security_from_arguments(args, os.environ.get("DELLM_TOKEN"), server=True)
    except SecurityError as exc:
        print(f"dellm-coordinator: {exc}", file=sys.stderr)
        return 2
    registry_spec = args.registry or str(default_registry_path())
    if args.probation_canaries < 0 or args.max_nodes < 1 or args.node_retention <= 0 or args.warm_budget < 0:
        print("dellm-coordinator: --probation-canaries and --warm-budget must be 0 or more, --max-nodes at least "
              "1 and --node-retention above 0", file=sys.stderr)
        return 2
    config = CoordinatorConfig(
        listen=args.listen, cluster=args.cluster,
        health=HealthConfig(interval_s=args.health_interval, max_missed=args.health_misses, ttl_s=args.node_ttl),
        admission=AdmissionConfig(probation_canaries=args.probation_canaries, max_nodes=args.max_nodes,
                                  retention_s=args.node_retention, warm_budget_s=args.warm_budget),
    )
    if args.redundancy < 1:
        print("dellm-coordinator: --redundancy must be at least 1", file=sys.stderr)
        return 2
    if args.max_queries < 1 or args.max_queries_per_client < 1:
        print("dellm-coordinator: --max-queries and --max-queries-per-client must be at least 1", file=sys.stderr)
        return 2
    config = replace(config, accept_labels=args.accept_labels, program_aided=args.programs,
                     canary_interval_s=args.canary_interval,
                     max_queries=args.max_queries, max_queries_per_client=args.max_queries_per_client, route=replace(
        config.route, redundancy_threshold=args.redundancy_threshold, redundancy=args.redundancy,
        exploration=args.exploration, seed=args.seed, latency_weight=args.latency_weight,
        fitness_weight=args.fitness_weight))
    if args.max_chunks < 1:
        print("dellm-coordinator: --max-chunks must be at least 1", file=sys.stderr)
        return 2
    config = replace(config, decompose=replace(config.decompose, max_chunks=args.max_chunks))
    if args.synth_budget is not None and args.synth_budget < 0:
        print("dellm-coordinator: --synth-budget must be 0 (none) or more", file=sys.stderr)
        return 2
    config = replace(config, synthesis=replace(config.synthesis, time_budget_s=args.synth_budget or None))
    if args.samples < 1 or args.escalation_nodes < 0 or not args.escalation_budget >= 0:
        print("dellm-coordinator: --samples must be at least 1, --escalation-nodes and --escalation-budget at "
              "least 0", file=sys.stderr)
        return 2
    config = replace(config, dispatch=replace(config.dispatch, samples=args.samples,
                                              escalation_nodes=args.escalation_nodes,
                                              escalation_budget_s=args.escalation_budget or None))
    if args.max_tokens:
        config = replace(config, dispatch=replace(config.dispatch, max_tokens=args.max_tokens))
    try:
        synthesizer, planner = build_model_stages(args.synth_model, args.synth_backend, args.synth_threads, config,
                                                  args.planner)
    except GenerationCheckError as exc:
        print(f"dellm-coordinator: the synthesis model cannot run here: {exc}; or run with --synth-model none",
              file=sys.stderr)
        return 1
    except Exception as exc:  # model errors: tell the user which file and how to fix it
        print(f"dellm-coordinator: cannot load the synthesis model: {exc}\n"
              f"  pull it with `dellm models pull {args.synth_model}` or run with --synth-model none",
              file=sys.stderr)
        return 2
    try:
        discovery = build_discovery(args)
        registry = open_registry(registry_spec, initial_fitness=config.reward.initial_fitness)
    except MissingExtraError as exc:
        print(f"dellm-coordinator: {exc}" + (" (or --discovery static|none)" if "discovery" in str(exc) else ""),
              file=sys.stderr)
        return 2
    except RegistryUnavailableError as exc:  # a Redis that cannot be reached, a file that cannot be the registry
        print(f"dellm-coordinator: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the registry's folder cannot be made
        why = (f"{exc.filename} is not a folder" if isinstance(exc, FileExistsError | NotADirectoryError)
               else f"{exc.strerror or exc} ({exc.filename or registry_spec})")
        print(f"dellm-coordinator: cannot open the registry {registry_spec}: {why}; give another --registry path",
              file=sys.stderr)
        return 2
    coordinator = Coordinator(config, registry, synthesizer, discovery, planner, security)
    try:
        asyncio.run(serve(coordinator, config.listen))
    except RegistryWriteError as exc:  # said loudly in the log as it happened; the exit status says it too
        print(f"dellm-coordinator: {exc}", file=sys.stderr)
        return 1
    except ListenError as exc:  # the port is taken: never shared with another coordinator (no SO_REUSEPORT)
        print(f"dellm-coordinator: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"dellm-coordinator: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
