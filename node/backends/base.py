"""The one protocol every inference backend implements, and the async bridge to it.

A backend is synchronous and owns one model context: ``generate`` is a blocking
iterator that the node runs in a worker thread (never on the event loop), one
generation at a time per backend. :func:`stream_generation` is that bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class BackendError(RuntimeError):
    """A backend could not load its model or failed while generating."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_tokens: int = 128
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    system: str | None = None
    #: Few-shot (prompt, answer) pairs, shown to the model before ``prompt`` (see ``node.backends.prompting``).
    examples: tuple[tuple[str, str], ...] = ()
    seed: int = 0  # sampling seed when temperature > 0 (distinct samples of one prompt); 0: the backend's own


@dataclass(frozen=True)
class TokenPiece:
    """Text the model produced since the previous piece, with its evidence.

    ``logprobs`` holds the natural-log probability of each token in ``text``
    (empty when the backend has none). The last piece of a generation carries a
    ``finish_reason`` (``stop``, ``length`` or ``cancelled``) and may have empty text.
    """

    text: str
    logprobs: tuple[float, ...] = ()
    finish_reason: str | None = None


@dataclass(frozen=True)
class BackendDescription:
    backend: str  # llama_cpp | transformers | scripted
    model: str  # catalogue name or file name
    quantization: str = ""
    context_size: int = 0
    model_path: str = ""


@runtime_checkable
class InferenceBackend(Protocol):
    def describe(self) -> BackendDescription: ...

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[TokenPiece]:
        """Yield pieces as the model produces them; stop early once ``cancel`` is set."""
        ...

    def close(self) -> None: ...


#: The range a token's logprob counts within: above 0 is a probability over 1, and below -100 (e^-100)
#: is as good as impossible. Keeps exp(mean) in [e^-100, 1] whatever a model or a peer reports.
LOGPROB_MIN, LOGPROB_MAX = -100.0, 0.0


def confidence_from_logprobs(logprobs: Sequence[float]) -> float:
    """Geometric-mean token probability, exp(mean logprob), in [0, 1]; 0.5 when there is no evidence.

    Each logprob counts clamped to [LOGPROB_MIN, LOGPROB_MAX]: +inf as 0, -inf and NaN as -100
    (NaN is no evidence of anything, so it earns the least confidence). Total: it never raises.
    The coordinator goes further and refuses a stream with NaN or infinite logprobs as malformed.
    """
    if not logprobs:
        return 0.5
    total = math.fsum(LOGPROB_MIN if math.isnan(v) else min(LOGPROB_MAX, max(LOGPROB_MIN, v)) for v in logprobs)
    return math.exp(total / len(logprobs))


@dataclass
class _Bridge:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[TokenPiece | BaseException | None] = field(default_factory=asyncio.Queue)

    def put(self, item: TokenPiece | BaseException | None) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


async def stream_generation(
    backend: InferenceBackend, request: GenerationRequest, lock: asyncio.Lock
) -> AsyncIterator[TokenPiece]:
    """Run ``backend.generate`` in a worker thread and yield its pieces on the event loop.

    ``lock`` serializes generations on one backend (a model context is not thread-safe).
    Closing the iterator early (the caller went away) sets the cancel flag, and the
    worker stops at the next token; the lock is released only once it has.
    """
    async with lock:
        bridge = _Bridge(asyncio.get_running_loop())
        cancel = threading.Event()

        def work() -> None:
            try:
                for piece in backend.generate(request, cancel):
                    bridge.put(piece)
                    if cancel.is_set():
                        break
            except BaseException as exc:  # handed to the event loop, re-raised there
                bridge.put(exc)
            finally:
                bridge.put(None)

        worker = asyncio.get_running_loop().run_in_executor(None, work)
        carried: list[TokenPiece | BaseException | None] = []  # an item taken while merging, not merged
        try:
            while True:
                item = carried.pop() if carried else await bridge.queue.get()
                # Pieces already waiting (the consumer was busy) go out as one: the same text and logprobs
                # in the same order, in fewer messages. A model generating slower than it is read is unaffected.
                while isinstance(item, TokenPiece) and item.finish_reason is None and not bridge.queue.empty():
                    following = bridge.queue.get_nowait()
                    if not isinstance(following, TokenPiece):
                        carried.append(following)
                        break
                    item = TokenPiece(item.text + following.text, item.logprobs + following.logprobs,
                                      following.finish_reason)
                if item is None:
                    break
                if isinstance(item, BaseException):
                    if isinstance(item, BackendError):
                        raise item
                    raise BackendError(f"generation failed: {item}") from item
                yield item
        finally:
            cancel.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(worker)
