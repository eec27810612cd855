"""Transformers backend: the same GGUF file, dequantized to float32 and run by torch.

``model.generate`` runs in its own thread and hands each committed token to a
streamer; this backend's ``generate`` turns that push stream back into a blocking
iterator. Token choice is made by one logits processor that sees the model's raw
logits: it records the log-softmax of the token it picks (argmax, or a temperature
sample) and masks every other token, so the logprob of each streamed token is the
model's own, before any sampling transform.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import queue
import struct
import threading
import time
import warnings
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dellm.node.backends.base import BackendDescription, BackendError, GenerationRequest, TokenPiece
from dellm.node.backends.loop import END_OF_GENERATION, ContextRoom, GenerationStep, pieces_from_steps
from dellm.node.backends.prompting import FINISH_CANCELLED, chat_messages, plain_prompt

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_TOP_K = 40  # sampling (temperature > 0) draws from the 40 likeliest tokens, as llama.cpp does


class TransformersBackend:
    """One GGUF model loaded with transformers' GGUF reader; one generation at a time."""

    def __init__(
        self,
        model_path: Path,
        *,
        model_name: str,
        instruct: bool | None = None,
        n_threads: int | None = None,
        seed: int = 0,
        adapter: Path | None = None,
    ) -> None:
        import torch

        self._model_path = Path(model_path)
        self._model_name = model_name
        if n_threads:
            torch.set_num_threads(n_threads)
        started = time.monotonic()
        if adapter is not None:
            check_adapter_folder(Path(adapter))  # before the slow model load: fail fast
        self._tokenizer, self._model = load_gguf_model(self._model_path)
        if adapter is not None:
            self._model = _with_adapter(self._model, Path(adapter), model_name)
        self._model.eval()
        template = getattr(self._tokenizer, "chat_template", None)
        self._instruct = bool(template) if instruct is None else instruct
        if self._instruct and not template:
            raise BackendError(f"{self._model_path} has no chat template; load it with instruct=False")
        self._eos_ids = _eos_token_ids(self._model, self._tokenizer)
        self._generator = torch.Generator().manual_seed(seed)
        self._closed = False
        self._description = BackendDescription(
            backend="transformers",
            model=model_name if adapter is None else f"{model_name}+lora:{Path(adapter).name}",
            quantization=_gguf_quantization_name(self._model_path),
            context_size=int(getattr(self._model.config, "max_position_embeddings", 0) or 0),
            model_path=str(self._model_path),
        )
        logger.info(
            "loaded %s from %s in %.1fs (dequantized from %s, instruct=%s, threads=%d)",
            self._description.model,
            self._model_path,
            time.monotonic() - started,
            self._description.quantization or "unknown quantization",
            self._instruct,
            torch.get_num_threads(),
        )

    @property
    def instruct(self) -> bool:
        return self._instruct

    def describe(self) -> BackendDescription:
        return self._description

    def close(self) -> None:
        self._closed = True
        self._model = None

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[TokenPiece]:
        if self._closed:
            raise BackendError(f"{self._model_name}: backend is closed")
        if cancel.is_set():  # before the prompt is even encoded
            yield TokenPiece("", finish_reason=FINISH_CANCELLED)
            return
        try:
            inputs = self._encode(request)
        except Exception as exc:  # a chat template may raise on unusual messages
            raise BackendError(f"{self._model_name}: could not format the prompt: {exc}") from exc
        room = ContextRoom(int(inputs["input_ids"].shape[-1]), self._description.context_size)
        steps = self._steps(inputs, request, room.token_budget(request), cancel)
        yield from pieces_from_steps(steps, request, cancel, room, instruct=self._instruct, model_name=self._model_name)

    def _steps(
        self, inputs: dict[str, Any], request: GenerationRequest, max_tokens: int, cancel: threading.Event
    ) -> Generator[GenerationStep, None, None]:
        """Each token ``model.generate`` commits, decoded, with its logprob.

        The model runs in a worker thread, started on the first ``next``; closing the steps
        halts it and waits for it.
        """
        tokens: queue.Queue[Any] = queue.Queue()
        halt = threading.Event()
        worker = self._start_model(inputs, request, max_tokens, tokens, halt_on=(cancel, halt))
        decoder = _TextDecoder(self._tokenizer)
        try:
            while (item := tokens.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise BackendError(f"{self._model_name}: generation failed: {item}") from item
                token, logprob = item
                if token in self._eos_ids:
                    yield END_OF_GENERATION
                    return
                yield decoder.step(token, logprob)
        finally:
            halt.set()
            worker.join()

    def _start_model(
        self,
        inputs: dict[str, Any],
        request: GenerationRequest,
        max_tokens: int,
        sink: queue.Queue[Any],
        *,
        halt_on: tuple[threading.Event, ...],
    ) -> threading.Thread:
        """Start ``model.generate`` in a thread that puts each (token, logprob), or its exception,
        into ``sink`` and ``_DONE`` last; it stops early once any of ``halt_on`` is set."""
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        chooser = _TokenChooser(request.temperature, self._generator)
        config = GenerationConfig(
            max_new_tokens=max_tokens,
            do_sample=False,  # _TokenChooser picks the token; greedy then takes it
            eos_token_id=sorted(self._eos_ids) or None,
            pad_token_id=min(self._eos_ids) if self._eos_ids else None,
        )

        def run() -> None:
            try:
                self._model.generate(
                    **inputs,
                    generation_config=config,
                    logits_processor=LogitsProcessorList([chooser]),
                    stopping_criteria=StoppingCriteriaList([_HaltWhenSet(*halt_on)]),
                    streamer=_QueueStreamer(sink, chooser),
                )
            except BaseException as exc:  # handed to the consuming thread
                sink.put(exc)
            finally:
                sink.put(_DONE)

        worker = threading.Thread(target=run, name=f"generate-{self._model_name}", daemon=True)
        worker.start()
        return worker

    def _encode(self, request: GenerationRequest) -> dict[str, Any]:
        if self._instruct:
            prompt = self._tokenizer.apply_chat_template(
                chat_messages(request), tokenize=False, add_generation_prompt=True
            )
            # The template writes its own special tokens.
            return dict(self._tokenizer(prompt, return_tensors="pt", add_special_tokens=False))
        return dict(self._tokenizer(plain_prompt(request), return_tensors="pt"))


def load_gguf_model(model_path: Path) -> tuple[Any, Any]:
    """(tokenizer, model) from a GGUF file, dequantized to float32 by transformers' GGUF reader.

    Never touches the network. The model is returned as loaded (train mode is the caller's
    choice). Raises :class:`BackendError` when the file is missing or cannot be read.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_path)
    if not path.is_file():
        raise BackendError(f"model file not found: {path}")
    directory, file_name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file_name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=file_name, dtype=torch.float32, local_files_only=True
        )
    except Exception as exc:
        raise BackendError(f"could not load GGUF model {path}: {exc}") from exc
    return tokenizer, model


#: The file peft writes into every adapter folder; its absence means the folder holds no adapter.
ADAPTER_CONFIG_FILE = "adapter_config.json"
#: What ``dellm-node train`` writes beside the adapter: base model, pairs, epochs, losses.
ADAPTER_METADATA_FILE = "dellm_adapter.json"


def check_adapter_folder(adapter: Path) -> None:
    """Raise :class:`BackendError` unless ``adapter`` holds a peft adapter and peft is installed."""
    if not adapter.is_dir():
        raise BackendError(f"adapter folder not found: {adapter}")
    if not (adapter / ADAPTER_CONFIG_FILE).is_file():
        raise BackendError(
            f"{adapter} holds no LoRA adapter (no {ADAPTER_CONFIG_FILE}); make one with `dellm-node train`"
        )
    try:
        import peft  # noqa: F401
    except ImportError as exc:
        raise BackendError(f"serving a LoRA adapter needs peft ({exc}); pip install 'dellm[transformers]'") from exc


def _with_adapter(model: Any, adapter: Path, model_name: str) -> Any:
    """``model`` with the LoRA adapter in ``adapter`` merged into its weights."""
    from peft import PeftModel

    trained_on = _adapter_base_model(adapter)
    if trained_on and trained_on != model_name:
        logger.warning("adapter %s was trained on %s, not on %s", adapter, trained_on, model_name)
    try:
        # Merged: generation then runs on plain weights, as fast as without an adapter.
        with quiet_peft():
            return PeftModel.from_pretrained(model, str(adapter), is_trainable=False).merge_and_unload()
    except Exception as exc:
        raise BackendError(f"could not apply the LoRA adapter {adapter} to {model_name}: {exc}") from exc


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft asks transformers a deprecated question (a FutureWarning); there is nothing to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _adapter_base_model(adapter: Path) -> str:
    """The base model named in the adapter's ``dellm_adapter.json``; "" when unknown."""
    try:
        metadata = json.loads((adapter / ADAPTER_METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(metadata.get("base_model", "")) if isinstance(metadata, dict) else ""


class _Done:
    pass


_DONE = _Done()


class _TextDecoder:
    """Decodes the generated tokens one at a time, holding back a half-decoded character."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._generated: list[int] = []
        self._decoded = ""  # the text handed on so far

    def step(self, token: int, logprob: float) -> GenerationStep:
        self._generated.append(token)
        text = self._tokenizer.decode(self._generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if text.endswith("\ufffd"):  # hold back a half-decoded character
            return GenerationStep("", logprob, held_back=text[len(self._decoded) :])
        new_text, self._decoded = text[len(self._decoded) :], text
        return GenerationStep(new_text, logprob)


class _TokenChooser:
    """A logits processor that picks the next token itself and records its logprob.

    It sees the raw logits (it is the only processor) and returns a mask that leaves
    only its choice, which greedy decoding then takes.
    """

    def __init__(self, temperature: float, generator: torch.Generator) -> None:
        self._temperature = temperature
        self._generator = generator
        self.chosen: collections.deque[tuple[int, float]] = collections.deque()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import torch

        logits = scores[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        if self._temperature > 0:
            top = torch.topk(logits, min(_TOP_K, logits.shape[-1]))
            weights = torch.softmax(top.values / self._temperature, dim=-1)
            pick = torch.multinomial(weights, 1, generator=self._generator)
            token = int(top.indices[pick].item())
        else:
            token = int(torch.argmax(logits).item())
        self.chosen.append((token, float(logprobs[token].item())))
        only = torch.full_like(scores, float("-inf"))
        only[:, token] = 0.0
        return only  # type: ignore[return-value]


class _QueueStreamer:
    """A transformers streamer that pairs each committed token with its logprob."""

    def __init__(self, sink: queue.Queue[Any], chooser: _TokenChooser) -> None:
        self._sink = sink
        self._chooser = chooser
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            chosen, logprob = self._chooser.chosen.popleft()
            if chosen != token:
                raise BackendError(f"streamed token {token} is not the chosen token {chosen}")
            self._sink.put((int(token), logprob))

    def end(self) -> None:
        pass


class _HaltWhenSet:
    """A stopping criterion: stop once the caller cancels or the consumer has enough."""

    def __init__(self, *events: threading.Event) -> None:
        self._events = events

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        import torch

        halted = any(event.is_set() for event in self._events)
        return torch.full((input_ids.shape[0],), halted, dtype=torch.bool)  # type: ignore[return-value]


def _eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _gguf_quantization_name(path: Path) -> str:
    """The GGUF file's ``general.file_type`` as a name like ``Q4_1``; "" when unknown."""
    try:
        import gguf

        file_type = _gguf_file_type(path)
        if file_type is None:
            return ""
        name = gguf.LlamaFileType(file_type).name
    except (OSError, ValueError, OverflowError, struct.error):  # descriptive only: a model that loaded still works
        logger.debug("no file type in %s", path, exc_info=True)
        return ""
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


# GGUF metadata value types: fixed-size scalars by type id; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _gguf_file_type(path: Path) -> int | None:
    """Read ``general.file_type`` from a GGUF header, stopping as soon as it is found.

    ``gguf.GGUFReader`` parses every field (seconds for a 150k-token vocabulary);
    this reads only the key/value pairs before the one wanted.
    """
    with path.open("rb") as f:

        def read(fmt: str) -> Any:
            size = struct.calcsize("<" + fmt)
            return struct.unpack("<" + fmt, f.read(size))[0]

        def read_string() -> bytes:
            return f.read(read("Q"))

        def skip_value(value_type: int) -> None:
            if value_type == _GGUF_STRING:
                f.seek(read("Q"), 1)
            elif value_type == _GGUF_ARRAY:
                item_type, count = read("I"), read("Q")
                if item_type in _GGUF_SCALARS:
                    f.seek(struct.calcsize("<" + _GGUF_SCALARS[item_type]) * count, 1)
                else:
                    for _ in range(count):
                        skip_value(item_type)
            elif value_type in _GGUF_SCALARS:
                f.seek(struct.calcsize("<" + _GGUF_SCALARS[value_type]), 1)
            else:
                raise ValueError(f"unknown GGUF value type {value_type}")

        if f.read(4) != b"GGUF":
            raise ValueError("not a GGUF file")
        read("I")  # version
        read("Q")  # tensor count
        for _ in range(read("Q")):
            key, value_type = read_string(), read("I")
            if key == b"general.file_type" and value_type in _GGUF_SCALARS:
                return int(read(_GGUF_SCALARS[value_type]))
            skip_value(value_type)
    return None
