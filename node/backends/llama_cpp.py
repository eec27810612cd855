"""llama.cpp backend: a GGUF model run by llama-cpp-python on the CPU.

Generation drives ``Llama.generate`` (the token-by-token loop under
``create_completion``) directly, so each token is handed on as soon as it is sampled.
The logprob of each chosen token is the log-softmax of the raw logits llama.cpp just
computed for that position (``llama_get_logits_ith``), which avoids ``logits_all=True``
(an n_ctx x n_vocab score matrix that ``create_completion(logprobs=...)`` requires).
"""

from __future__ import annotations

import codecs
import logging
import os
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dellm.node.backends.base import BackendDescription, BackendError, GenerationRequest, TokenPiece
from dellm.node.backends.loop import END_OF_GENERATION, ContextRoom, GenerationStep, pieces_from_steps
from dellm.node.backends.prompting import chat_messages, plain_prompt

if TYPE_CHECKING:
    import llama_cpp

logger = logging.getLogger(__name__)


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
    ) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._model_path = Path(model_path)
        self._model_name = model_name
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
            "loaded %s from %s (%s, instruct=%s, n_ctx=%d, threads=%d)",
            model_name,
            self._model_path,
            self._description.quantization or "unknown quantization",
            self._instruct,
            self._description.context_size,
            threads,
        )

    @property
    def instruct(self) -> bool:
        return self._instruct

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
        except Exception as exc:  # a chat template may raise on unusual messages
            raise BackendError(f"{self._model_name}: could not format the prompt: {exc}") from exc
        room = ContextRoom(len(prompt_tokens), llm.n_ctx())
        steps = self._steps(llm, prompt_tokens, request)
        yield from pieces_from_steps(steps, request, cancel, room, instruct=self._instruct, model_name=self._model_name)

    def _steps(
        self, llm: llama_cpp.Llama, prompt_tokens: list[int], request: GenerationRequest
    ) -> Generator[GenerationStep, None, None]:
        """Each token llama.cpp samples, decoded, with its logprob; nothing is sampled before the first ``next``."""
        import llama_cpp
        import numpy as np

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

    def _prompt_tokens(self, llm: llama_cpp.Llama, request: GenerationRequest) -> list[int]:
        if self._formatter is not None:
            rendered = self._formatter(messages=chat_messages(request)).prompt
            # The template writes any BOS itself, as llama-cpp-python's chat handlers assume.
            return llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)
        return llm.tokenize(plain_prompt(request).encode("utf-8"), add_bos=True, special=False)


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
