# PYTHON_ARGCOMPLETE_OK
"""``dellm-node``: parse flags, load the model, serve NodeService (and join a coordinator).

``dellm-node train ...`` instead fine-tunes a LoRA adapter on the node's verified feedback
(see :mod:`node.train`); ``dellm-node --backend transformers --adapter DIR`` serves with it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import sys
from pathlib import Path

from dellm.node.backends.base import BackendError
from dellm.node.backends.factory import BACKEND_KINDS, create_backend
from dellm.node.backends.scripted import ScriptError
from dellm.node.config import NodeConfig, default_state_dir
from dellm.node.daemon import node_info, serve_node
from dellm.node.models import ModelError, resolve_model
from dellm.node.selfcheck import GenerationCheckError, require_generation
from dellm.node.state import (
    FEEDBACK_FILE,
    NODE_NAME,
    FeedbackStore,
    NodeStateError,
    check_node_name,
    load_or_create_node_id,
    load_or_create_node_secret,
    lock_state_folder,
    node_state_dir,
)
from dellm.protos import MissingExtraError, autocomplete, import_extra, version_line
from dellm.protos.cli_config import add_config_argument, parse_with_config
from dellm.protos.cli_logging import add_log_level_argument, configure_logging
from dellm.protos.security import SecurityError, add_security_arguments, security_from_arguments
from dellm.protos.transport import DEFAULT_PORT, ListenError, with_default_port

MAX_TXT_ENTRY_BYTES = 255  # one mDNS TXT entry, "model=<name>" (RFC 6763)


def coordinator_address(text: str) -> str:
    """argparse ``type`` for --coordinator: HOST gets the default port."""
    try:
        return with_default_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def default_node_name(model: str | None = None) -> str:
    """This machine's short host name plus the model's (``laptop-qwen2.5-coder-0.5b-instruct``), so that two
    nodes serving different models on one machine get different names; cut to a valid node name (at most
    48 characters), or "node" when nothing valid is left."""
    host = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname().split(".")[0]).strip("-")
    slug = ""
    if model:
        stem = Path(model).name.removesuffix(".gguf") if model.endswith(".gguf") or "/" in model else model
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")
    name = "-".join(part for part in (host[:24] if slug else host[:48], slug) if part)[:48].strip("-.")
    return name if name and NODE_NAME.fullmatch(name) else "node"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dellm-node", description="Serve a small language model to a DELLM cluster.",
        epilog="commands:\n  dellm-node train ...   fine-tune a LoRA adapter on this node's verified feedback "
               "(see `dellm-node train --help`)", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_line("dellm-node"))
    parser.add_argument("--model", help="catalogue name (see `dellm models list`) or a local .gguf path")
    parser.add_argument("--backend", default="llama_cpp", choices=BACKEND_KINDS,
                        help="inference backend (default %(default)s; 'scripted' is a test double)")
    parser.add_argument("--script", type=Path, help="script file for the scripted test-double backend")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to serve on (default %(default)s)")
    parser.add_argument("--coordinator", default=None, type=coordinator_address,
                        help=f"HOST[:PORT] of a coordinator to join (port {DEFAULT_PORT} when none is given)")
    parser.add_argument("--cluster", default="default", help="cluster name (default %(default)s)")
    parser.add_argument("--advertise", action=argparse.BooleanOptionalAction, default=True,
                        help="announce the node over mDNS so coordinators on the LAN find it (default: on)")
    parser.add_argument("--interface", default=None,
                        help="address for mDNS to bind to (default: every interface)")
    parser.add_argument("--name", default=None,
                        help="node name, which keys its state folder: 1-48 letters, digits, '-', '_' or '.', not "
                             "starting with '.' (default: the host name and the model's, e.g. "
                             "laptop-qwen2.5-coder-0.5b-instruct)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for inference (default: all)")
    parser.add_argument("--prompt-cache", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the evaluated prompt prefix, and each recent system prompt's, in the llama.cpp "
                             "context between requests, so a request evaluates only what is new (default: on)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"where the node id and feedback live (default {default_state_dir()})")
    parser.add_argument("--few-shot", type=int, default=NodeConfig.few_shot, metavar="N",
                        help="put the N most similar verified examples from the node's feedback before each prompt "
                             "(default %(default)s; 0 disables)")
    parser.add_argument("--adapter", type=Path, default=None, metavar="DIR",
                        help="serve with the LoRA adapter `dellm-node train` wrote in DIR (transformers backend only)")
    add_log_level_argument(parser)
    add_config_argument(parser)
    add_security_arguments(parser, server=True)
    autocomplete(parser)
    return parse_with_config(parser, argv)


def parse_train_args(argv: list[str] | None) -> argparse.Namespace:
    from dellm.node.train import TrainConfig

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="dellm-node train",
        description="Fine-tune a LoRA adapter on the node's verified feedback "
                    "(needs `pip install 'dellm[transformers]'`).",
    )
    parser.add_argument("--model", required=True, help="catalogue name (see `dellm models list`) or a local .gguf path")
    parser.add_argument("--name", default=None,
                        help="the node's name, which keys its state folder (default: as dellm-node's, the host name "
                             "and the model's)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"where the node's feedback lives (default {default_state_dir()})")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the adapter to")
    parser.add_argument("--epochs", type=int, default=defaults.epochs,
                        help="passes over the pairs (default %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate, help="learning rate (default %(default)s)")
    parser.add_argument("--rank", type=int, default=defaults.rank, help="LoRA rank (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="pairs per step (default %(default)s)")
    parser.add_argument("--max-pairs", type=int, default=500, help="train on the newest N pairs (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for training (default: all)")
    add_log_level_argument(parser)
    return parser.parse_args(argv)


def train_main(argv: list[str]) -> int:
    """``dellm-node train``: 0 when the adapter was written, 2 for bad input, 1 when training failed."""
    args = parse_train_args(argv)
    configure_logging(args.log_level)
    from dellm.node.train import NoVerifiedFeedbackError, TrainConfig, TrainingError, feedback_path, read_training_pairs
    from dellm.node.train import train_adapter as run_training

    name = default_node_name(args.model) if args.name is None else args.name
    try:
        check_node_name(name)
        model = resolve_model(args.model)
        pairs = read_training_pairs(feedback_path(args.state_dir or default_state_dir(), name), args.max_pairs)
        config = TrainConfig(epochs=args.epochs, learning_rate=args.lr, rank=args.rank, batch_size=args.batch_size)
        result = run_training(
            model.path, pairs, args.out, model_name=model.name,
            model_sha256=model.sha256,
            instruct=model.instruct,
            config=config, n_threads=args.threads or os.cpu_count(),
        )
    except (ModelError, NoVerifiedFeedbackError, ValueError) as exc:
        print(f"dellm-node train: {exc}", file=sys.stderr)
        return 2
    except (TrainingError, BackendError) as exc:
        print(f"dellm-node train: {exc}", file=sys.stderr)
        return 1
    curve = " -> ".join(f"{loss:.3f}" for loss in result.epoch_losses)
    print(f"trained a LoRA adapter for {model.name} on {result.pairs} pairs ({result.skipped} left out) in "
          f"{result.train_seconds:.1f}s, {result.steps} steps; loss by epoch {curve}", flush=True)
    print(f"saved in {result.adapter_dir}; serve it with `dellm-node --model {args.model} --backend transformers "
          f"--adapter {result.adapter_dir}`", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train":
        return train_main(argv[1:])
    args = parse_args(argv)
    configure_logging(args.log_level)
    if args.adapter is not None and args.backend != "transformers":
        print(f"dellm-node: --adapter needs --backend transformers (the {args.backend} backend cannot serve a "
              "LoRA adapter)", file=sys.stderr)
        return 2
    if args.few_shot < 0:
        print("dellm-node: --few-shot must be 0 or more", file=sys.stderr)
        return 2
    name = default_node_name(args.model or ("scripted" if args.backend == "scripted" else None)) \
        if args.name is None else args.name
    try:
        check_node_name(name)
    except NodeStateError as exc:
        print(f"dellm-node: --name: {exc}", file=sys.stderr)
        return 2
    try:
        security = security_from_arguments(args, os.environ.get("DELLM_TOKEN"), server=True)
        if args.advertise:
            import_extra("zeroconf", "lan", "advertising over mDNS (on by default; --no-advertise turns it off)")
    except (SecurityError, MissingExtraError) as exc:
        print(f"dellm-node: {exc}", file=sys.stderr)
        return 2
    config = NodeConfig(listen=args.listen, name=name, coordinator=args.coordinator, cluster=args.cluster,
                        advertise=args.advertise, interface=args.interface,
                        state_dir=args.state_dir or default_state_dir(), few_shot=args.few_shot, security=security)
    try:  # before the model loads: a node that cannot know who it is fails at once
        folder = node_state_dir(config.state_dir, name)
        lock = lock_state_folder(folder, name)  # held until the process ends
        node_id = load_or_create_node_id(folder)
        load_or_create_node_secret(folder)  # what proves the id to coordinators: checked (or made) now
    except (NodeStateError, OSError) as exc:  # a corrupt node id is refused, never silently replaced
        print(f"dellm-node: {exc}", file=sys.stderr)
        return 2
    try:
        if args.backend == "scripted":
            backend = create_backend("scripted", model_path=None, model_name=args.model or "scripted",
                                     instruct=None, n_threads=None, script_path=args.script)
            sha256 = ""
        else:
            if not args.model:
                print("dellm-node: --model NAME|PATH is required (see `dellm models list`)", file=sys.stderr)
                return 2
            model = resolve_model(args.model)
            if args.backend == "llama_cpp":
                require_generation(model.path, threads=args.threads)  # in a child: a crash keeps us out
            backend = create_backend(
                args.backend, model_path=model.path, model_name=model.name,
                instruct=model.instruct,
                n_threads=args.threads or os.cpu_count(), adapter=args.adapter, prompt_cache=args.prompt_cache,
            )
            sha256 = model.sha256
    except (ModelError, BackendError, ScriptError, ValueError) as exc:
        print(f"dellm-node: {exc}", file=sys.stderr)
        return 2
    except GenerationCheckError as exc:
        print(f"dellm-node: not joining the network: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        extra = "node" if args.backend == "llama_cpp" else args.backend
        print(f"dellm-node: the {args.backend} backend is not installed ({exc}); "
              f"install it with `pip install 'dellm[{extra}]'` (see the README for llama.cpp's build flags)",
              file=sys.stderr)
        return 2
    model_name = backend.describe().model
    if args.advertise and len(f"model={model_name}".encode()) > MAX_TXT_ENTRY_BYTES:
        backend.close()
        print(f"dellm-node: the model name {model_name[:40]!r}... is {len(model_name.encode())} bytes; mDNS "
              f"advertises at most {MAX_TXT_ENTRY_BYTES - len('model=')} (rename the model file, or run with "
              "--no-advertise)", file=sys.stderr)
        return 2

    feedback = FeedbackStore(folder / FEEDBACK_FILE)
    try:
        asyncio.run(serve_node(backend, node_info(node_id, name, backend, sha256, config.cluster), feedback, config))
    except ListenError as exc:  # the port is taken: never shared (no SO_REUSEPORT)
        print(f"dellm-node: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"dellm-node: {exc}", file=sys.stderr)
        return 1
    finally:
        feedback.close()
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
