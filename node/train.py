"""``dellm-node train``: fine-tune a LoRA adapter on the node's verified feedback.

The pairs come from :meth:`node.state.FeedbackStore.training_pairs` (answers graded by an
exact check, a label or a user; never a bare vote). Each pair is rendered exactly as the
node will see it when serving (the model's chat template for instruct models, the plain
``Question: ...\\nAnswer:`` prompt for base models), and only the answer's tokens count in
the loss. The model is the node's own GGUF file, dequantized to float32 by transformers;
peft wraps its attention projections with LoRA, and a plain torch loop (AdamW, gradient
clipping) trains them. The adapter folder then serves with
``dellm-node --backend transformers --adapter DIR``.

torch, transformers and peft are imported inside the functions that use them, so importing
this module (the CLI does, for ``train`` only) stays cheap.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dellm.node.backends.base import GenerationRequest
from dellm.node.backends.hf_transformers import ADAPTER_METADATA_FILE, load_gguf_model, quiet_peft
from dellm.node.backends.prompting import chat_messages, plain_example_answer, plain_prompt
from dellm.node.state import EVIDENCE_SOURCES, FEEDBACK_FILE, FeedbackStore, node_state_dir

logger = logging.getLogger(__name__)

_IGNORE = -100  # label value the loss skips: prompt tokens and padding


class TrainingError(RuntimeError):
    """Training could not start or failed; the message says why and what to do."""


class NoVerifiedFeedbackError(TrainingError):
    """The node has no verified (prompt, answer) pairs to learn from."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2  # passes over the pairs; a few hundred pairs need no more
    learning_rate: float = 2e-4  # AdamW; the usual LoRA rate
    rank: int = 8  # LoRA rank: ~0.3% of a 135M model's weights become trainable
    alpha: int | None = None  # LoRA scale numerator; None: 2 x rank
    batch_size: int = 4  # pairs per step; small, for laptop memory
    max_tokens: int = 512  # a pair longer than this (prompt + answer tokens) is left out
    max_grad_norm: float = 1.0  # gradient clipping
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")  # attention projections (llama, qwen2, gemma3)
    seed: int = 0  # LoRA initialisation and batch order


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    pairs: int  # pairs trained on
    skipped: int  # pairs left out (too long, or nothing to learn)
    epochs: int
    steps: int
    step_losses: tuple[float, ...]
    epoch_losses: tuple[float, ...]  # mean step loss of each epoch
    load_seconds: float
    train_seconds: float
    target_modules: tuple[str, ...] = field(default=())

    @property
    def final_loss(self) -> float:
        return self.epoch_losses[-1] if self.epoch_losses else math.nan


@dataclass(frozen=True)
class EncodedPair:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # _IGNORE over the prompt: only the answer is learned


def feedback_path(state_dir: Path, name: str) -> Path:
    """Where the node called ``name`` keeps its feedback (nothing is created)."""
    return node_state_dir(state_dir, name, create=False) / FEEDBACK_FILE


def read_training_pairs(path: Path, max_pairs: int) -> list[tuple[str, str]]:
    """The newest ``max_pairs`` verified pairs in the feedback database at ``path``.

    Raises :class:`NoVerifiedFeedbackError` when there is no database or no verified pair.
    """
    if not path.is_file():
        raise NoVerifiedFeedbackError(
            f"no verified feedback yet: {path} does not exist (serve the node under this --name and "
            "--state-dir, and let a coordinator grade its answers)"
        )
    store = FeedbackStore(path)
    try:
        pairs = store.training_pairs(max_pairs)
        total = store.count()
    finally:
        store.close()
    if not pairs:
        raise NoVerifiedFeedbackError(
            f"no verified feedback yet: {path} holds {total} feedback entries, none graded by "
            f"{', '.join(EVIDENCE_SOURCES)} with an answer to learn from"
        )
    return pairs


def encode_pair(tokenizer: Any, prompt: str, answer: str, *, instruct: bool) -> EncodedPair:
    """Token ids of ``prompt`` + ``answer`` as the node renders them, with the prompt masked out."""
    request = GenerationRequest(prompt)
    if instruct:
        messages = chat_messages(request)
        prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": answer}], tokenize=False
        )
        if full_text.startswith(prompt_text):
            completion_text = full_text[len(prompt_text) :]  # the answer and the template's end-of-turn
        else:  # a template that rewrites earlier turns: fall back to the answer and EOS
            completion_text = answer + (tokenizer.eos_token or "")
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    else:
        # The blank line is the plain prompt's stop sequence: the model learns to end there.
        completion_text = f" {plain_example_answer(answer)}\n\n"
        prompt_ids = tokenizer(plain_prompt(request))["input_ids"]
    completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    return EncodedPair(
        tuple(prompt_ids) + tuple(completion_ids), (_IGNORE,) * len(prompt_ids) + tuple(completion_ids)
    )


def train_adapter(
    model_path: Path,
    pairs: Sequence[tuple[str, str]],
    out: Path,
    *,
    model_name: str,
    model_sha256: str = "",
    instruct: bool | None = None,
    config: TrainConfig | None = None,
    n_threads: int | None = None,
) -> TrainResult:
    """Train a LoRA adapter for the GGUF model at ``model_path`` on ``pairs``; save it in ``out``.

    ``instruct`` None decides by the presence of a chat template. Raises
    :class:`TrainingError` (peft missing, no usable pair, no attention projections) or
    :class:`~node.backends.base.BackendError` (the model cannot be loaded).
    """
    config = config or TrainConfig()
    _check_inputs(pairs, config)
    base = _load_base_model(Path(model_path), instruct=instruct, seed=config.seed, n_threads=n_threads)
    encoded = _encode_pairs(base.tokenizer, pairs, instruct=base.instruct, max_tokens=config.max_tokens)
    peft_model, targets = _with_lora(base.model, config)
    logger.info(
        "training a rank-%d LoRA on %s (%s) with %d pairs (%d left out), %d epochs, lr %g, batch %d",
        config.rank, model_name, ", ".join(targets), len(encoded), len(pairs) - len(encoded), config.epochs,
        config.learning_rate, config.batch_size,
    )
    curve = _train_epochs(peft_model, encoded, _pad_token_id(base.tokenizer), config)
    result = TrainResult(
        adapter_dir=Path(out), pairs=len(encoded), skipped=len(pairs) - len(encoded), epochs=config.epochs,
        steps=len(curve.step_losses), step_losses=curve.step_losses, epoch_losses=curve.epoch_losses,
        load_seconds=base.load_seconds, train_seconds=curve.seconds, target_modules=targets,
    )
    trained_from = {
        "base_model": model_name,
        "base_model_sha256": model_sha256,
        "base_model_file": Path(model_path).name,
        "instruct": base.instruct,
    }
    _save_adapter(peft_model, result, config, trained_from)
    return result


@dataclass(frozen=True)
class _BaseModel:
    """The GGUF model to train on, loaded, with the prompt form it is trained in."""

    tokenizer: Any
    model: Any
    instruct: bool  # chat template (True) or plain ``Question: ...\nAnswer:`` prompt
    load_seconds: float


@dataclass(frozen=True)
class _TrainingCurve:
    step_losses: tuple[float, ...]
    epoch_losses: tuple[float, ...]  # mean step loss of each epoch
    seconds: float


def _check_inputs(pairs: Sequence[tuple[str, str]], config: TrainConfig) -> None:
    """Raise :class:`TrainingError` for no pairs, a non-positive setting, or torch or peft missing."""
    if not pairs:
        raise NoVerifiedFeedbackError("no verified feedback yet: no training pairs were given")
    if config.epochs < 1 or config.batch_size < 1 or config.rank < 1 or config.learning_rate <= 0:
        raise TrainingError(f"epochs, batch size, rank and learning rate must be positive: {config}")
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise TrainingError(f"training needs torch and peft ({exc}); pip install 'dellm[transformers]'") from exc


def _load_base_model(model_path: Path, *, instruct: bool | None, seed: int, n_threads: int | None) -> _BaseModel:
    """Seed torch (the LoRA initialisation draws from it) and load the model; ``instruct`` None:
    chat form when the model has a chat template."""
    import torch

    if n_threads:
        torch.set_num_threads(n_threads)
    torch.manual_seed(seed)
    started = time.monotonic()
    tokenizer, model = load_gguf_model(model_path)
    load_seconds = time.monotonic() - started
    template = getattr(tokenizer, "chat_template", None)
    use_chat = bool(template) if instruct is None else instruct
    if use_chat and not template:
        raise TrainingError(f"{model_path} has no chat template; train it as a base model (instruct=False)")
    return _BaseModel(tokenizer, model, use_chat, load_seconds)


def _encode_pairs(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], *, instruct: bool, max_tokens: int
) -> list[EncodedPair]:
    """The pairs that fit in ``max_tokens`` with an answer to learn, encoded; TrainingError when none does."""
    encoded: list[EncodedPair] = []
    for prompt, answer in pairs:
        try:
            pair = encode_pair(tokenizer, prompt, answer, instruct=instruct)
        except Exception as exc:  # a chat template may raise on unusual text
            logger.warning("leaving out a pair that could not be formatted: %s", exc)
            continue
        if len(pair.input_ids) > max_tokens or all(label == _IGNORE for label in pair.labels):
            continue
        encoded.append(pair)
    if not encoded:
        raise TrainingError(f"none of the {len(pairs)} pairs fits in {max_tokens} tokens with an answer to learn")
    return encoded


def _with_lora(model: Any, config: TrainConfig) -> tuple[Any, tuple[str, ...]]:
    """``model`` wrapped by peft with LoRA on its attention projections, and the projections' names."""
    import peft

    targets = attention_targets(model, config.target_modules)
    lora = peft.LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha if config.alpha is not None else 2 * config.rank,
        lora_dropout=0.0,  # a few hundred pairs, two epochs: dropout would only slow learning
        target_modules=list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with quiet_peft():
        return peft.get_peft_model(model, lora), targets


def _train_epochs(peft_model: Any, pairs: Sequence[EncodedPair], pad_id: int, config: TrainConfig) -> _TrainingCurve:
    """Train the LoRA weights with AdamW and gradient clipping, in a seeded order of batches."""
    import torch

    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)
    order = random.Random(config.seed)
    peft_model.train()
    step_losses: list[float] = []
    epoch_losses: list[float] = []
    started = time.monotonic()
    for epoch in range(config.epochs):
        shuffled = list(pairs)
        order.shuffle(shuffled)
        losses = [
            _train_step(peft_model, optimizer, trainable, _batch(shuffled[start : start + config.batch_size], pad_id),
                        max_grad_norm=config.max_grad_norm, epoch=epoch)
            for start in range(0, len(shuffled), config.batch_size)
        ]
        step_losses.extend(losses)
        epoch_losses.append(sum(losses) / len(losses))
        logger.info("epoch %d/%d: mean loss %.4f over %d steps", epoch + 1, config.epochs, epoch_losses[-1],
                    len(losses))
    return _TrainingCurve(tuple(step_losses), tuple(epoch_losses), time.monotonic() - started)


def _train_step(
    peft_model: Any,
    optimizer: Any,
    trainable: list[Any],
    batch: tuple[Any, Any, Any],
    *,
    max_grad_norm: float,
    epoch: int,
) -> float:
    """One optimizer step on one batch (input ids, attention mask, labels), gradients clipped; its loss."""
    import torch

    input_ids, attention, labels = batch
    loss = peft_model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
    if not torch.isfinite(loss):
        raise TrainingError(f"the loss became {loss.item()} at epoch {epoch + 1}; try a lower --lr")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.item())


def _save_adapter(peft_model: Any, result: TrainResult, config: TrainConfig, trained_from: dict[str, Any]) -> None:
    """Write the LoRA weights into ``result.adapter_dir`` and, beside them, what they were trained on and how."""
    out = result.adapter_dir
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out), save_embedding_layers=False)  # only the LoRA weights
    metadata = {
        **trained_from,
        "pairs": result.pairs,
        "skipped": result.skipped,
        "epochs": result.epochs,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "epoch_losses": list(result.epoch_losses),
        "train_seconds": round(result.train_seconds, 2),
        "config": {**asdict(config), "target_modules": list(result.target_modules)},
        "created_at": time.time(),
    }
    (out / ADAPTER_METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    logger.info(
        "saved the adapter in %s (final loss %.4f, %.1fs training)", out, result.final_loss, result.train_seconds
    )


def attention_targets(model: Any, preferred: Sequence[str]) -> tuple[str, ...]:
    """Those of ``preferred`` that name linear layers in ``model``; TrainingError when none does."""
    import torch

    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    found = tuple(name for name in preferred if name in linear)
    if not found:
        raise TrainingError(
            f"the model has none of the attention projections {', '.join(preferred)}; "
            f"its linear layers are: {', '.join(sorted(linear))}"
        )
    return found


def _pad_token_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _batch(pairs: Sequence[EncodedPair], pad_id: int) -> tuple[Any, Any, Any]:
    """Right-padded input ids, attention mask and labels (padding ignored by the loss)."""
    import torch

    width = max(len(p.input_ids) for p in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), _IGNORE, dtype=torch.long)
    for row, pair in enumerate(pairs):
        size = len(pair.input_ids)
        ids[row, :size] = torch.tensor(pair.input_ids, dtype=torch.long)
        attention[row, :size] = 1
        labels[row, :size] = torch.tensor(pair.labels, dtype=torch.long)
    return ids, attention, labels


__all__ = [
    "NoVerifiedFeedbackError",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "attention_targets",
    "encode_pair",
    "feedback_path",
    "read_training_pairs",
    "train_adapter",
]
