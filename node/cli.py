"""``dellm-node``: parse flags, load the model, serve NodeService (and join a coordinator)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from pathlib import Path

from node.backends.base import BackendError
from node.backends.factory import BACKEND_KINDS, create_backend
from node.backends.scripted import ScriptError
from node.config import NodeConfig, default_state_dir
from node.models import ModelError, resolve_model
from node.server import node_info, serve_node
from node.state import FeedbackStore, load_or_create_node_id, node_state_dir


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dellm-node", description="Serve a small language model to a DELLM cluster.")
    parser.add_argument("--model", help="catalogue name (see `dellm models list`) or a local .gguf path")
    parser.add_argument("--backend", default="llama_cpp", choices=BACKEND_KINDS,
                        help="inference backend (default %(default)s; 'scripted' is a test double)")
    parser.add_argument("--script", type=Path, help="script file for the scripted test-double backend")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to serve on (default %(default)s)")
    parser.add_argument("--coordinator", default=None, help="HOST:PORT of a coordinator to join")
    parser.add_argument("--cluster", default="default", help="cluster name (default %(default)s)")
    parser.add_argument("--advertise", action=argparse.BooleanOptionalAction, default=True,
                        help="announce the node over mDNS so coordinators on the LAN find it (default: on)")
    parser.add_argument("--interface", default=None,
                        help="address for mDNS to bind to (default: every interface)")
    parser.add_argument("--name", default=None, help="node name; also keys its state folder (default: hostname)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for inference (default: all)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"where the node id and feedback live (default {default_state_dir()})")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    name = args.name or socket.gethostname()
    config = NodeConfig(listen=args.listen, name=name, coordinator=args.coordinator, cluster=args.cluster,
                        advertise=args.advertise, interface=args.interface,
                        state_dir=args.state_dir or default_state_dir())
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
            backend = create_backend(
                args.backend, model_path=model.path, model_name=model.name,
                instruct=model.spec.instruct if model.spec is not None else None,
                n_threads=args.threads or os.cpu_count(),
            )
            sha256 = model.spec.sha256 if model.spec is not None else ""
    except (ModelError, BackendError, ScriptError, ValueError) as exc:
        print(f"dellm-node: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"dellm-node: the {args.backend} backend is not installed ({exc}); "
              f"install it with `pip install 'dellm[{args.backend}]'`", file=sys.stderr)
        return 2

    folder = node_state_dir(config.state_dir, name)
    node_id = load_or_create_node_id(folder)
    feedback = FeedbackStore(folder / "feedback.sqlite3")
    try:
        asyncio.run(serve_node(backend, node_info(node_id, name, backend, sha256, config.cluster), feedback, config))
    except OSError as exc:
        print(f"dellm-node: {exc}", file=sys.stderr)
        return 1
    finally:
        feedback.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
