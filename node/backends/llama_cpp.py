"""llama.cpp backend: a GGUF model run by llama-cpp-python on the CPU.

Generation drives ``Llama.generate`` (the token-by-token loop under
``create_completion``) directly, so each token is handed on as soon as it is sampled.
The logprob of each chosen token is the log-softmax of the raw logits llama.cpp just
computed for that position (``llama_get_logits_ith``), which avoids ``logits_all=True``
(an n_ctx x n_vocab score matrix that ``create_completion(logprobs=...)`` requires).

The prompt cache (on by default): ``Llama.generate`` already keeps the tokens it evaluated
and, for the next prompt, evaluates only what follows their longest common prefix, so
requests with one system prompt skip its re-evaluation. Requests that alternate between
system prompts (a coordinator's program prompt for math chunks, its plain one for the rest)
would lose that prefix at every switch, so :class:`SystemPrefixStates` keeps the KV state of
each recent system prefix and puts it back when its prompt returns. With the cache off, the
context is reset before every generation and the whole prompt is evaluated each time.
"""

from __future__ import annotations

import codecs
import ctypes
import dataclasses
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dellm.node.backends.base import BackendDescription, BackendError, GenerationRequest, TokenPiece
from dellm.node.backends.loop import END_OF_GENERATION, ContextRoom, GenerationStep, pieces_from_steps
from dellm.node.backends.prompting import chat_messages, plain_prompt

if TYPE_CHECKING:
    import llama_cpp

logger = logging.getLogger(__name__)

#: How many system prefixes' KV states a backend keeps (least recently used goes first). A node
#: sees a handful of system prompts (the coordinator's seven: one per plain operation, one line of code,
#: programs, worked steps; and none). A kept state is small: ~28 KB a token for the 1.5B coder.
SYSTEM_PREFIX_STATES = 8

#: The user message rendered to find where a chat prompt's system part ends (any short text will do).
_PROBE_MESSAGE = "?"


@dataclass(frozen=True)
class PromptEvaluation:
    """What the last generation's prompt cost: its tokens, and how many llama.cpp evaluated."""

    prompt_tokens: int
    evaluated_tokens: int  # the rest was already in the context (the prompt cache)

    @property
    def cached_tokens(self) -> int:
        return self.prompt_tokens - self.evaluated_tokens


class LlamaCppBackend:
    """One GGUF model in one llama.cpp context; one generation at a time."""

    def __init__(
        self,
        model_path: Path,
        *,
        model_name: str,
        instruct: bool | None = None,
        n_threads: int | None = None,
        n_ctx: int = 4096,
        seed: int = 0,
        prompt_cache: bool = True,
    ) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._model_path = Path(model_path)
        self._model_name = model_name
        self._prompt_cache = prompt_cache
        self._prefix_states = SystemPrefixStates(SYSTEM_PREFIX_STATES)
        self._last_prompt: PromptEvaluation | None = None
        if not self._model_path.is_file():
            raise BackendError(f"model file not found: {self._model_path}")
        threads = n_threads or os.cpu_count() or 1
        try:
            self._llm: llama_cpp.Llama | None = llama_cpp.Llama(
                model_path=str(self._model_path),
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                seed=seed,
                verbose=False,
            )
        except Exception as exc:  # llama.cpp reports a bad file as ValueError/RuntimeError
            raise BackendError(f"could not load GGUF model {self._model_path}: {exc}") from exc
        llm = self._llm
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._n_vocab = llm.n_vocab()
        metadata: dict[str, str] = dict(llm.metadata)
        template = metadata.get("tokenizer.chat_template") or ""
        self._instruct = bool(template) if instruct is None else instruct
        if self._instruct and not template:
            raise BackendError(f"{self._model_path} has no chat template; load it with instruct=False")
        self._formatter: Any = None
        if self._instruct:
            eos, bos = llm.token_eos(), llm.token_bos()
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=llm.detokenize([eos], special=True).decode("utf-8", "replace") if eos >= 0 else "",
                bos_token=llm.detokenize([bos], special=True).decode("utf-8", "replace") if bos >= 0 else "",
            )
        self._description = BackendDescription(
            backend="llama_cpp",
            model=model_name,
            quantization=_quantization_name(metadata.get("general.file_type")),
            context_size=llm.n_ctx(),
            model_path=str(self._model_path),
        )
        logger.info(
            "loaded %s from %s (%s, instruct=%s, n_ctx=%d, threads=%d, prompt cache %s)",
            model_name,
            self._model_path,
            self._description.quantization or "unknown quantization",
            self._instruct,
            self._description.context_size,
            threads,
            "on" if prompt_cache else "off",
        )

    @property
    def instruct(self) -> bool:
        return self._instruct

    @property
    def prompt_cache(self) -> bool:
        return self._prompt_cache

    @property
    def last_prompt(self) -> PromptEvaluation | None:
        """The last generation's prompt: its length and how much of it llama.cpp evaluated (None before any)."""
        return self._last_prompt

    def describe(self) -> BackendDescription:
        return self._description

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[TokenPiece]:
        llm = self._llm
        if llm is None:
            raise BackendError(f"{self._model_name}: backend is closed")
        try:
            prompt_tokens = self._prompt_tokens(llm, request)
            system_prefix = self._system_prefix(llm, request, prompt_tokens) if self._prompt_cache else ()
        except Exception as exc:  # a chat template may raise on unusual messages
            raise BackendError(f"{self._model_name}: could not format the prompt: {exc}") from exc
        room = ContextRoom(len(prompt_tokens), llm.n_ctx())
        steps = self._steps(llm, prompt_tokens, system_prefix, request)
        yield from pieces_from_steps(steps, request, cancel, room, instruct=self._instruct, model_name=self._model_name)

    def _steps(
        self, llm: llama_cpp.Llama, prompt_tokens: list[int], system_prefix: tuple[int, ...],
        request: GenerationRequest,
    ) -> Generator[GenerationStep, None, None]:
        """Each token llama.cpp samples, decoded, with its logprob; nothing is sampled before the first ``next``."""
        import llama_cpp
        import numpy as np

        try:
            if self._prompt_cache:
                self._prefix_states.prepare(llm, system_prefix)
                cached = _keep_common_prefix(llm, prompt_tokens)
            else:
                llm.reset()  # the whole prompt is evaluated, as in a new context
                cached = 0
        except Exception as exc:  # llama.cpp's state calls
            raise BackendError(f"{self._model_name}: could not prepare the context: {exc}") from exc
        self._note_prompt(len(prompt_tokens), len(prompt_tokens) - cached)

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        if request.seed and request.temperature > 0:
            llm.set_seed(request.seed)  # distinct samples of one prompt (self-consistency)
        tokens = llm.generate(
            prompt_tokens,
            temp=max(request.temperature, 0.0),
            top_k=40,
            top_p=0.95,
            min_p=0.05,
            repeat_penalty=1.0,
        )
        try:
            for token in tokens:
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    yield END_OF_GENERATION
                    return
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(self._n_vocab,))
                logprob = _log_softmax_at(logits, token)
                text = decoder.decode(llm.detokenize([token]))
                yield GenerationStep(text, logprob, held_back=_undecoded_text(decoder))
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"{self._model_name}: generation failed: {exc}") from exc
        finally:
            tokens.close()

    def _note_prompt(self, prompt_tokens: int, evaluated_tokens: int) -> None:
        self._last_prompt = PromptEvaluation(prompt_tokens, evaluated_tokens)
        logger.debug("%s: prompt of %d tokens, %d evaluated, %d from the prompt cache", self._model_name,
                     prompt_tokens, evaluated_tokens, self._last_prompt.cached_tokens)

    def _system_prefix(self, llm: llama_cpp.Llama, request: GenerationRequest, prompt_tokens: list[int]
                       ) -> tuple[int, ...]:
        """The leading tokens of ``prompt_tokens`` that any request with this system prompt starts with.

        Found by rendering the same system prompt with a short probe question and no examples: the two
        token lists differ from where the user's words begin (for a chat template, after its user header)."""
        probe = self._prompt_tokens(llm, dataclasses.replace(request, prompt=_PROBE_MESSAGE, examples=()))
        length = 0
        for ours, theirs in zip(prompt_tokens, probe, strict=False):
            if ours != theirs:
                break
            length += 1
        return tuple(prompt_tokens[: min(length, len(prompt_tokens) - 1)])  # at least one token left to evaluate

    def _prompt_tokens(self, llm: llama_cpp.Llama, request: GenerationRequest) -> list[int]:
        if self._formatter is not None:
            rendered = self._formatter(messages=chat_messages(request)).prompt
            # The template writes any BOS itself, as llama-cpp-python's chat handlers assume.
            return llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)
        return llm.tokenize(plain_prompt(request).encode("utf-8"), add_bos=True, special=False)


class SystemPrefixStates:
    """The KV states of recent system prefixes, so requests alternating between system prompts keep each warm.

    ``Llama.generate`` reuses what the context holds only as far as the new prompt agrees with it, and a
    prompt with another system prompt agrees for a few tokens. So before such a prompt the context is cut
    down to its own system prefix, whose keys and values (llama.cpp's state of sequence 0) are kept, and
    the new prompt's prefix is put back if it was kept before. A kept state was computed inside a whole
    prompt, just as the prefix reuse keeps it (a prefix evaluated on its own can differ in the last bits,
    enough to change a greedy answer). Used by one generation at a time, like the context it serves.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._states: OrderedDict[tuple[int, ...], Any] = OrderedDict()  # prefix -> ctypes byte array
        self._current: tuple[int, ...] = ()  # the system prefix of the prompt that last filled the context

    def __len__(self) -> int:
        return len(self._states)

    def prepare(self, llm: llama_cpp.Llama, prefix: tuple[int, ...]) -> None:
        """Before a prompt starting with ``prefix``: keep the context's own prefix, restore this one if kept."""
        if not prefix or self._capacity <= 0:
            return
        if not _starts_with(llm, prefix):
            self._keep(llm, self._current)
            self._restore(llm, prefix)
        self._current = prefix

    def _keep(self, llm: llama_cpp.Llama, prefix: tuple[int, ...]) -> None:
        import llama_cpp

        if not prefix or not _starts_with(llm, prefix):
            return
        # Removing part of a sequence fails on recurrent models; their context is then not kept.
        if not llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(llm.ctx), 0, len(prefix), -1):
            return
        llm.n_tokens = len(prefix)
        size = llama_cpp.llama_state_seq_get_size(llm.ctx, 0)
        state = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(llm.ctx, state, size, 0) != size:
            logger.debug("could not copy the KV state of a %d-token system prefix", len(prefix))
            return
        self._states[prefix] = state
        self._states.move_to_end(prefix)
        while len(self._states) > self._capacity:
            self._states.popitem(last=False)

    def _restore(self, llm: llama_cpp.Llama, prefix: tuple[int, ...]) -> None:
        import llama_cpp

        state = self._states.get(prefix)
        if state is None:
            return  # generate() evaluates it; it is kept when another system prompt comes
        self._states.move_to_end(prefix)
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(llm.ctx), 0, -1, -1)  # a whole sequence: never fails
        llm.n_tokens = 0
        if llama_cpp.llama_state_seq_set_data(llm.ctx, state, len(state), 0) == 0:
            logger.debug("could not restore the KV state of a %d-token system prefix", len(prefix))
            del self._states[prefix]
            llm.reset()
            return
        llm.input_ids[: len(prefix)] = prefix
        llm.n_tokens = len(prefix)
        llm._requires_eval = True  # as Llama.load_state does: decode before sampling


def _starts_with(llm: llama_cpp.Llama, prefix: tuple[int, ...]) -> bool:
    return llm.n_tokens >= len(prefix) and tuple(int(t) for t in llm.input_ids[: len(prefix)]) == prefix


def _keep_common_prefix(llm: llama_cpp.Llama, prompt_tokens: list[int]) -> int:
    """Cut the context down to the longest prefix it shares with ``prompt_tokens``, leaving at least one
    prompt token to evaluate; return that prefix's length.

    ``Llama.generate`` would find the same prefix itself; cutting it here first makes what is reused
    known (it evaluates exactly the rest)."""
    import llama_cpp

    held = min(llm.n_tokens, len(prompt_tokens) - 1)
    common = 0
    for ours, theirs in zip(llm.input_ids[:held], prompt_tokens, strict=False):
        if int(ours) != theirs:
            break
        common += 1
    if common < llm.n_tokens:
        if common == 0 or not llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(llm.ctx), 0, common, -1):
            llm.reset()  # nothing shared, or a recurrent model that cannot drop part of its state
            return 0
        llm.n_tokens = common
        llm._requires_eval = True  # the logits are not this prefix's: decode before sampling
    return common


def _undecoded_text(decoder: codecs.IncrementalDecoder) -> str:
    """The bytes ``decoder`` still holds (an incomplete character) as the text a final decode would give."""
    pending: bytes = decoder.getstate()[0]
    return pending.decode("utf-8", "replace")


def _log_softmax_at(logits: Any, index: int) -> float:
    """log p(index) under softmax(logits), computed in float64."""
    import numpy as np

    values = logits.astype(np.float64)
    peak = values.max()
    return float(values[index] - peak - np.log(np.exp(values - peak).sum()))


def _quantization_name(file_type: str | None) -> str:
    """``general.file_type`` (llama_ftype) as a name like ``Q4_K_M``; "" when unknown."""
    import llama_cpp

    if file_type is None:
        return ""
    try:
        wanted = int(file_type)
    except ValueError:
        return ""
    for attr in dir(llama_cpp):
        if attr.startswith("LLAMA_FTYPE_") and attr != "LLAMA_FTYPE_GUESSED" and getattr(llama_cpp, attr) == wanted:
            return attr.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
    return ""
