"""Create the inference backend a node was configured with.

Each backend module is imported only when chosen, so a node running llama.cpp never
imports torch, and a scripted test node imports neither.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dellm.node.backends.base import InferenceBackend

logger = logging.getLogger(__name__)

BACKEND_KINDS: tuple[str, ...] = ("llama_cpp", "transformers", "scripted")


def create_backend(
    kind: str,
    *,
    model_path: Path | None,
    model_name: str,
    instruct: bool | None,
    n_threads: int | None,
    script_path: Path | None = None,
    adapter: Path | None = None,
    prompt_cache: bool = True,
) -> InferenceBackend:
    """Load the backend of ``kind`` (one of :data:`BACKEND_KINDS`).

    ``adapter`` is a LoRA adapter folder (from ``dellm-node train``); only the transformers
    backend serves one. ``prompt_cache`` keeps the llama.cpp context's evaluated prompt prefix
    (and each recent system prompt's) between requests; the other backends evaluate every
    prompt whole and ignore it. Raises ``ValueError`` for an unknown kind, a missing path or an
    adapter given to another backend, and :class:`~node.backends.base.BackendError` when the
    model or adapter cannot be loaded.
    """
    if adapter is not None and kind != "transformers":
        raise ValueError(f"a LoRA adapter (--adapter) needs the transformers backend, not {kind}")
    logger.info("creating %s backend for %s", kind, model_name)
    if kind == "llama_cpp":
        from dellm.node.backends.llama_cpp import LlamaCppBackend

        return LlamaCppBackend(
            _required(model_path, kind), model_name=model_name, instruct=instruct, n_threads=n_threads,
            prompt_cache=prompt_cache,
        )
    if kind == "transformers":
        from dellm.node.backends.hf_transformers import TransformersBackend

        return TransformersBackend(
            _required(model_path, kind), model_name=model_name, instruct=instruct, n_threads=n_threads,
            adapter=adapter,
        )
    if kind == "scripted":
        from dellm.node.backends.scripted import ScriptedBackend

        if script_path is None:
            raise ValueError("the scripted backend needs a script_path")
        return ScriptedBackend.from_file(script_path)
    raise ValueError(f"unknown backend kind {kind!r}; valid kinds: {', '.join(BACKEND_KINDS)}")


def _required(model_path: Path | None, kind: str) -> Path:
    if model_path is None:
        raise ValueError(f"the {kind} backend needs a model_path")
    return model_path
