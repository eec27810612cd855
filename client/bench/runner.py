"""Running ``dellm bench gsm8k``: how well one node, the network, and the network after learning solve GSM8K.

Three runs, each on its own real processes on loopback (``client.local_cluster``):

(a) single    one coordinator and ONE node (``--single-model``), redundancy off: the baseline.
(b) network   one coordinator and one node per ``--models`` entry, every chunk sent to all of them
              (``--redundancy`` = number of models), answers voted on; no labels are sent, so this is
              the network as a user sees it. Fresh registry, fresh node state.
(c) learned   the same network on a fresh coordinator started with ``--accept-labels``, fresh node
              state. First a TRAINING slice of GSM8K (problems ``offset+n .. offset+n+train_n``, never
              the evaluation slice) is asked WITH its labels: the coordinator rewards every node by the
              label (fitness per operation type) and sends each node verified feedback, which the node
              keeps and reuses as few-shot examples. Then the evaluation slice is asked without labels.

Two more runs answer "does the network beat its best single node?" (``--runs alone,sampled``):

alone         the strongest fair single node: ``--alone-model`` (default the 1.5B coder) in ONE node process,
              no coordinator, asked directly, greedy, one sample, with each of its natural prompts (chain of
              thought; the coordinator's own program prompt, the program run in the same sandbox); see
              ``alone.py``. Phases ``alone_cot`` and ``alone_program``; the better is the baseline.
sampled       the network with the coordinator's default flags (synthesis off, ``--max-tokens``) on
              ``--sampled-models`` (default one 1.5B and two 0.5B nodes, one thread each), once per
              ``--samples`` value (default 1, 3, 5): word problems get up to that many answers, worked
              steps and programs alternating (``coordinator/pipeline/consistency.py``), spread over the
              nodes, voted over the numbers they reach, stopped once the vote is clear. Phases
              ``samples_<n>``, each on a fresh cluster.

paired        ``alone`` (its first prompt) and ``sampled`` (its first ``--samples``) with both clusters up at
              once, each problem asked of the node alone and then of the network, the order swapped every
              problem: whatever else the machine is doing weighs on both alike, so their latencies compare
              pair by pair even on a busy machine (``paired_latency`` in the results gives the ratios).

The evaluation slice is problems ``offset .. offset+n`` for every run. A question is right
when the final number of the answer (``coordinator.pipeline.assemble.final_number``) equals the
label after ``####`` (numeric compare, tolerance 1e-6). A question that errors (no node, deadline)
counts as an error and as not right, and the run goes on.

Defaults were chosen from measurements on the 2-core development machine (no GPU):
qwen2.5-coder-0.5b-instruct writes a worked GSM8K answer (~100-320 tokens) in 4-11 s with both
cores (p50 7.3 s); beside it, on one core each, the pair answers in ~10 s (p50), 15 s (p95). See
``DEFAULT_*`` below.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from dellm.client.api import ClientConfig, DellmClient
from dellm.client.bench.alone import PROMPT_KINDS, ask_all_alone, ask_alone, warm_up
from dellm.client.bench.data import DEFAULT_DATA, REPO_ROOT, BenchError, Problem, count_problems, load_problems
from dellm.client.bench.report import PHASE_TITLES, phase_title, write_outputs
from dellm.client.bench.scoring import (
    ALONE_PREFIX,
    PHASES,
    SAMPLES_PREFIX,
    QuestionRecord,
    error_kind,
    is_correct,
    summarize,
)
from dellm.client.errors import DellmError
from dellm.client.local_cluster import ClusterError, LocalCluster, NodeSpec
from dellm.coordinator.pipeline.answers import final_number
from dellm.coordinator.sandbox import ProgramRunner
from dellm.protos import dellm_pb2

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("bench-results") / "gsm8k"
# 30 evaluation + 30 training problems. Measured on the 2-core machine with the default models (while other
# work shared the cores): (a) 220 s, (b) 300 s, (c) 1050 s (training 490 s + evaluation 550 s; few-shot
# examples lengthen every prompt), 1570 s in all: well under an hour. 30 problems resolve ~3.3 points each.
DEFAULT_N = 30
DEFAULT_TRAIN_N = 30
DEFAULT_SINGLE_MODEL = "qwen2.5-coder-0.5b-instruct"
# Redundancy only helps when the redundant answers can differ: nodes decode greedily, so two copies of
# one model answer identically. The network pairs the baseline model with a stronger, slower one.
DEFAULT_MODELS = ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")
DEFAULT_MAX_TOKENS = 320  # a worked answer plus its 'Answer: <number>' line; 96 (the coordinator's) cuts it off
DEFAULT_QUESTION_TIMEOUT_S = 600.0  # one whole question; the coordinator's own per-stream deadline is shorter
RUNS = ("single", "network", "learning", "alone", "sampled", "paired")  # one cluster each (sampled: one per --samples)
DEFAULT_RUNS = ("single", "network", "learning")  # (a), (b), (c): what `dellm bench gsm8k` runs unless told
# The baseline and the self-consistency network (``--runs alone,sampled``).
DEFAULT_ALONE_MODEL = "qwen2.5-coder-1.5b-instruct"  # the strongest model the catalogue ships
DEFAULT_SAMPLED_MODELS = ("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct")
DEFAULT_SAMPLES = (1, 3, 5)


# ---------------------------------------------------------------------------------------------
# Configuration and its checks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    n: int = DEFAULT_N
    offset: int = 0
    train_n: int = DEFAULT_TRAIN_N
    data: Path = DEFAULT_DATA
    single_model: str = DEFAULT_SINGLE_MODEL
    models: tuple[str, ...] = DEFAULT_MODELS
    threads: int | None = None  # per node; None: all cores for (a), cores / number of models for (b), (c)
    max_tokens: int = DEFAULT_MAX_TOKENS
    out: Path = DEFAULT_OUT
    redundancy: int | None = None  # nodes per chunk in (b) and (c); None: every node
    question_timeout_s: float = DEFAULT_QUESTION_TIMEOUT_S
    alone_model: str = DEFAULT_ALONE_MODEL
    alone_prompts: tuple[str, ...] = PROMPT_KINDS
    # Copies of one model are fine here: each sample has its own seed, so copies answer differently.
    sampled_models: tuple[str, ...] = DEFAULT_SAMPLED_MODELS
    samples: tuple[int, ...] = DEFAULT_SAMPLES
    network_tag: str = ""  # added to the sampled phases' names (samples_3_<tag>): several networks side by side
    backend: str = "llama_cpp"  # "scripted" runs test-double nodes (tests); models then name scripts
    scripts: Mapping[str, Path] = field(default_factory=dict)  # model name -> script, for "scripted"

    def node_threads(self, nodes: int) -> int:
        cores = os.cpu_count() or 1
        return self.threads or max(1, cores // max(1, nodes))

    def network_redundancy(self) -> int:
        return self.redundancy or len(self.models)


def validate_config(config: BenchConfig, runs: Sequence[str] = DEFAULT_RUNS) -> int:
    """Refuse parameters that cannot give a meaningful run; returns the number of problems in the file.
    Only the models of ``runs`` must exist."""
    unknown = [r for r in runs if r not in RUNS]
    if unknown or not runs:
        raise BenchError(f"--runs takes some of {', '.join(RUNS)}, got {', '.join(runs) or 'none'}")
    if config.n < 1:
        raise BenchError(f"--n must be at least 1, got {config.n}")
    if config.offset < 0:
        raise BenchError(f"--offset must be 0 or more, got {config.offset}")
    if config.train_n < 0:
        raise BenchError(f"--train-n must be 0 or more, got {config.train_n}")
    if config.max_tokens < 16:
        raise BenchError(f"--max-tokens must be at least 16 for a worked answer, got {config.max_tokens}")
    if config.threads is not None and config.threads < 1:
        raise BenchError(f"--threads must be at least 1, got {config.threads}")
    if not config.models:
        raise BenchError("--models needs at least one model")
    if len(set(config.models)) != len(config.models):
        raise BenchError(f"--models names a model twice ({', '.join(config.models)}): greedy copies of one "
                         "model give identical answers, so redundancy would only cost time")
    if config.redundancy is not None and not 1 <= config.redundancy <= len(config.models):
        raise BenchError(f"--redundancy must be between 1 and the number of models ({len(config.models)}), "
                         f"got {config.redundancy}")
    if not config.sampled_models:
        raise BenchError("--sampled-models needs at least one model")
    if not config.samples or min(config.samples) < 1:
        raise BenchError(f"--samples must be whole numbers of at least 1, got {list(config.samples)}")
    unknown = [p for p in config.alone_prompts if p not in PROMPT_KINDS]
    if unknown or not config.alone_prompts:
        raise BenchError(f"--alone-prompts must name some of {', '.join(PROMPT_KINDS)}, "
                         f"got {list(config.alone_prompts)}")
    if not all(c.isalnum() or c in "-." for c in config.network_tag):
        raise BenchError(f"--network-tag takes letters, digits, '-' and '.', got {config.network_tag!r}")
    if config.question_timeout_s <= 0:
        raise BenchError("the question timeout must be positive")
    if not config.data.is_file():
        raise BenchError(f"GSM8K data file not found: {config.data} (give one with --data PATH)")
    total = count_problems(config.data)
    if config.offset >= total:
        raise BenchError(f"--offset {config.offset} is beyond the {total} problems in {config.data}")
    if config.offset + config.n > total:
        raise BenchError(f"--offset {config.offset} --n {config.n} needs problems up to {config.offset + config.n}, "
                         f"but {config.data} has {total}")
    if config.train_n and config.offset + config.n + config.train_n > total:
        raise BenchError(f"the training slice (problems {config.offset + config.n} .. "
                         f"{config.offset + config.n + config.train_n}, after the evaluation slice) runs past the "
                         f"{total} problems in {config.data}; lower --train-n or --offset")
    wanted = {config.single_model} if "single" in runs else set()
    wanted |= set(config.models) if {"network", "learning"} & set(runs) else set()
    wanted |= {config.alone_model} if {"alone", "paired"} & set(runs) else set()
    wanted |= set(config.sampled_models) if {"sampled", "paired"} & set(runs) else set()
    for model in sorted(wanted):
        _check_model(model, config)
    return total


def _check_model(model: str, config: BenchConfig) -> None:
    if config.backend == "scripted":
        script = config.scripts.get(model)
        if script is None or not Path(script).is_file():
            raise BenchError(f"unknown model {model!r}: no script for it among {sorted(config.scripts)}")
        return
    from dellm.node.models import CATALOGUE, ModelError, resolve_model

    try:
        resolve_model(model, verify=False)  # the node verifies the sha256 when it loads the file
    except ModelError as exc:
        known = ", ".join(CATALOGUE)
        raise BenchError(f"unknown or unavailable model {model!r}: {exc} (catalogue: {known})") from exc


def node_spec(name: str, model: str, config: BenchConfig, threads: int) -> NodeSpec:
    if config.backend == "scripted":
        return NodeSpec(name, model, backend="scripted", script=Path(config.scripts[model]))
    return NodeSpec(name, model, backend=config.backend, threads=threads)


def node_name(model: str) -> str:
    stem = Path(model).stem if model.endswith(".gguf") else model
    return f"bench-{stem}"


# ---------------------------------------------------------------------------------------------
# Asking questions
# ---------------------------------------------------------------------------------------------


def vote_number(answer: str, normalized: str, failed: bool) -> float | None:
    """The number a node's answer is judged by: the value the coordinator voted on (``num:<value>``, for a math
    chunk what its program computed), else the final number of its text."""
    if failed or not answer:
        return None
    if normalized.startswith("num:"):
        try:
            return float(normalized.removeprefix("num:"))
        except ValueError:
            pass
    return final_number(answer)


def _vote_entry(vote: dellm_pb2.Vote, names: Mapping[str, str], label: float) -> dict[str, Any]:
    number = vote_number(vote.answer, vote.normalized, vote.failed)
    return {
        "node_id": vote.node_id, "node": names.get(vote.node_id, vote.node_id[:8]), "answer": vote.answer,
        "normalized": vote.normalized, "number": number, "correct": is_correct(number, label) and not vote.failed,
        "confidence": round(vote.confidence, 4), "weight": round(vote.weight, 4),
        "latency_ms": round(vote.latency_ms, 1),
        "failed": vote.failed, "error": vote.error,
    }


async def ask_problem(client: DellmClient, problem: Problem, phase: str, names: Mapping[str, str],
                      send_label: bool) -> QuestionRecord:
    """Ask one problem; an error of the network becomes the record's ``error``, never an exception."""
    record = QuestionRecord(phase, problem.index, problem.question, problem.label, labelled=send_label)
    chunks: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    final: dellm_pb2.FinalEvent | None = None
    try:
        async for event in client.ask(problem.question, reference_answer=problem.label if send_label else ""):
            kind = event.WhichOneof("event")
            if kind == "plan":
                record.query_id = event.plan.query_id
            elif kind == "chunk_result":
                r = event.chunk_result
                chunks[r.chunk_id] = {
                    "chunk_id": r.chunk_id, "answer": r.answer, "winner": names.get(r.winner_node_id, r.winner_node_id),
                    "unanimous": r.unanimous, "agreement": round(r.agreement, 4), "groups": r.groups,
                    "cancelled": [names.get(n, n) for n in r.cancelled_node_ids],
                    "votes": [_vote_entry(v, names, problem.value) for v in r.votes],
                }
            elif kind == "final":
                final = event.final
    except DellmError as exc:
        record.error = str(exc)
    except TimeoutError:
        record.error = "DEADLINE_EXCEEDED: no answer in time"
    record.latency_s = time.perf_counter() - started
    record.chunks = list(chunks.values())
    if final is None:
        record.error = record.error or "the stream ended without a final answer"
        record.error_kind = error_kind(record.error)
        return record
    record.query_id = final.query_id
    record.answer = final.answer
    record.coordinator_ms = final.total_ms
    record.predicted = final_number(final.answer)
    record.correct = is_correct(record.predicted, problem.value)
    for provenance in final.chunks:
        chunks.setdefault(provenance.chunk_id, {"chunk_id": provenance.chunk_id, "votes": []}).update(
            {"operation": dellm_pb2.Operation.Name(provenance.operation), "text": provenance.text})
    record.rewards = [
        {"node": names.get(r.node_id, r.node_id[:8]), "chunk_id": r.chunk_id,
         "verdict": dellm_pb2.Verdict.Name(r.verdict), "source": r.source, "reward": round(r.reward, 4),
         "fitness_after": round(r.fitness_after, 4)}
        for r in final.rewards
    ]
    return record


async def ask_all(address: str, problems: Sequence[Problem], phase: str, *, send_labels: bool, timeout_s: float,
                  progress: Callable[[str], None], sink: list[QuestionRecord]) -> None:
    """Ask ``problems`` one after the other, appending each record to ``sink`` as it completes."""
    async with DellmClient(address, ClientConfig(ask_timeout_s=timeout_s)) as client:
        names = await client.node_names()
        for number, problem in enumerate(problems, start=1):
            record = await ask_problem(client, problem, phase, names, send_labels)
            sink.append(record)
            mark = "ERROR " + record.error if record.error else ("right" if record.correct else "wrong")
            done = [r for r in sink if r.phase == phase]
            right = sum(r.correct for r in done)
            progress(f"  [{phase} {number}/{len(problems)}] #{problem.index}: label {problem.label}, "
                     f"got {_fmt_number(record.predicted)} ({mark}) in {record.latency_s:.1f}s; "
                     f"{right}/{len(done)} right so far")


async def node_fitness(address: str) -> list[dict[str, Any]]:
    async with DellmClient(address) as client:
        nodes = await client.nodes()
    return [
        {"name": n.info.name, "model": n.info.model, "node_id": n.info.node_id, "fitness": round(n.fitness, 4),
         "answers": n.answers, "correct": n.correct, "failures": n.failures, "state": n.state}
        for n in sorted(nodes, key=lambda n: n.info.name)
    ]


def _fmt_number(value: float | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else f"{value:.6g}"


# ---------------------------------------------------------------------------------------------
# The three runs
# ---------------------------------------------------------------------------------------------


def code_version() -> dict[str, Any]:
    """The commit the bench ran on, and which tracked files differed from it (others may be editing)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        modified = git("status", "--porcelain", "--untracked-files=no").splitlines()
        return {"commit": git("rev-parse", "HEAD"), "modified": [line.split(maxsplit=1)[-1] for line in modified]}
    except (OSError, subprocess.SubprocessError):
        return {}


@dataclass
class BenchState:
    """Everything measured so far; written out even when the bench is interrupted."""

    config: BenchConfig
    command: str
    eval_problems: list[Problem]
    train_problems: list[Problem]
    records: list[QuestionRecord] = field(default_factory=list)
    fitness: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # phase -> nodes at its end
    phase_wall_s: dict[str, float] = field(default_factory=dict)
    nodes: dict[str, list[str]] = field(default_factory=dict)  # phase -> "name (model, threads)"
    started_unix: float = field(default_factory=time.time)
    wall_s: float = 0.0
    interrupted: bool = False
    failure: str = ""
    load_before: tuple[float, ...] = ()
    load_after: tuple[float, ...] = ()
    code: dict[str, dict[str, Any]] = field(default_factory=dict)  # run -> commit and modified files at its start
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)  # alone/sampled phase -> its command, setup, load


def _cluster(config: BenchConfig, phase: str) -> LocalCluster:
    workdir = config.out / "work" / phase
    if workdir.exists():
        shutil.rmtree(workdir)  # fresh registry and fresh node state for every run
    workdir.mkdir(parents=True)
    return LocalCluster(workdir=workdir)


def unique_node_names(models: Sequence[str]) -> list[str]:
    """One name per node: ``bench-<model>``, with ``-2``, ``-3`` ... for further copies of a model."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for model in models:
        seen[model] = seen.get(model, 0) + 1
        names.append(node_name(model) + (f"-{seen[model]}" if seen[model] > 1 else ""))
    return names


def _start_nodes(cluster: LocalCluster, config: BenchConfig, models: Sequence[str], threads: int) -> list[str]:
    started = []
    for name, model in zip(unique_node_names(models), models, strict=True):
        spec = node_spec(name, model, config, threads)
        cluster.start_node(spec, ready_timeout=300.0)
        started.append(f"{spec.name} ({model}, {spec.backend}, {threads} thread(s))")
    cluster.wait_for_nodes(len(models), timeout=120.0)
    return started


def _coordinator_flags(config: BenchConfig, redundancy: int | None, labels: bool = False) -> list[str]:
    # One answer per node and chunk: (a), (b) and (c) measure redundancy across nodes, not self-consistency.
    flags = ["--max-tokens", str(config.max_tokens), "--samples", "1"]
    if redundancy is None:  # a threshold above any complexity (at most 1.0): every chunk to one node
        flags += ["--redundancy-threshold", "2"]
    else:
        flags += ["--redundancy-threshold", "0", "--redundancy", str(redundancy)]
    if labels:
        flags.append("--accept-labels")
    return flags


def _run_phase(state: BenchState, phase: str, progress: Callable[[str], None]) -> None:
    """One run on its own cluster: "single" (a), "network" (b) or "learning" (c: train, then "learned")."""
    config = state.config
    started = time.monotonic()
    asks: list[tuple[str, list[Problem], bool]]
    if phase == "single":
        models: Sequence[str] = (config.single_model,)
        flags = _coordinator_flags(config, None)
        asks = [("single", state.eval_problems, False)]
    elif phase == "network":
        models = config.models
        flags = _coordinator_flags(config, config.network_redundancy())
        asks = [("network", state.eval_problems, False)]
    elif phase == "learning":
        models = config.models
        flags = _coordinator_flags(config, config.network_redundancy(), labels=True)
        asks = [("train", state.train_problems, True), ("learned", state.eval_problems, False)]
    else:
        raise ValueError(f"unknown run {phase!r}; expected one of {RUNS}")
    threads = config.node_threads(len(models))
    state.code[phase] = code_version()  # others may commit while the bench runs: each run says what it ran
    progress(f"{PHASE_TITLES[asks[-1][0]]}: starting a coordinator and {len(models)} node(s)")
    with _cluster(config, phase) as cluster:
        address = cluster.start_coordinator(synth_model="none", extra=flags)
        state.nodes[asks[-1][0]] = _start_nodes(cluster, config, models, threads)
        for name, problems, send_labels in asks:
            if not problems:
                continue
            what = "with labels" if send_labels else "without labels"
            progress(f"  {name}: {len(problems)} problem(s) #{problems[0].index}..#{problems[-1].index}, {what}")
            ask_started = time.monotonic()
            try:
                asyncio.run(ask_all(address, problems, name, send_labels=send_labels,
                                    timeout_s=config.question_timeout_s, progress=progress, sink=state.records))
            finally:
                state.phase_wall_s[name] = round(time.monotonic() - ask_started, 1)
            state.fitness[name] = asyncio.run(node_fitness(address))
    state.phase_wall_s[f"{phase}_total"] = round(time.monotonic() - started, 1)


def _run_alone(state: BenchState, progress: Callable[[str], None]) -> None:
    """The baseline: one node process, no coordinator, each prompt of ``config.alone_prompts`` in turn."""
    from dellm.coordinator.sandbox import SubprocessSandbox

    config = state.config
    threads = config.node_threads(1)
    state.code["alone"] = code_version()
    progress(f"one node alone ({config.alone_model}, {threads} thread(s)), no coordinator: "
             f"prompts {', '.join(config.alone_prompts)}")
    with _cluster(config, "alone") as cluster:  # no coordinator is started: the node serves on its own
        spec = node_spec(node_name(config.alone_model), config.alone_model, config, threads)
        node = cluster.start_node(spec, ready_timeout=300.0)
        progress(f"  warm-up generation (not measured): {asyncio.run(warm_up(node.address)):.1f}s")
        runner = SubprocessSandbox()
        for kind in config.alone_prompts:
            phase = ALONE_PREFIX + kind
            state.nodes[phase] = [f"{spec.name} ({config.alone_model}, {spec.backend}, {threads} thread(s)), alone"]
            state.meta[phase] = _phase_meta(state, {"prompt": kind, "model": config.alone_model, "threads": threads,
                                                    "max_tokens": config.max_tokens, "temperature": 0.0})
            progress(f"  {phase}: {len(state.eval_problems)} problem(s)")
            started = time.monotonic()
            try:
                asyncio.run(ask_all_alone(node.address, state.eval_problems, phase, kind, spec.name, runner,
                                          max_tokens=config.max_tokens, timeout_s=config.question_timeout_s,
                                          progress=progress, sink=state.records))
            finally:
                state.phase_wall_s[phase] = round(time.monotonic() - started, 1)
                state.meta[phase]["loadavg_after"] = list(_loadavg())


def sampled_flags(config: BenchConfig, samples: int) -> list[str]:
    """The coordinator's default flags but for the answer budget and the number of samples."""
    return ["--max-tokens", str(config.max_tokens), "--samples", str(samples)]


def _run_sampled(state: BenchState, progress: Callable[[str], None]) -> None:
    """The network at each ``config.samples``, each on a fresh cluster (registry, fitness and node state)."""
    config = state.config
    models = config.sampled_models
    threads = config.node_threads(len(models))
    for samples in config.samples:
        phase = f"{SAMPLES_PREFIX}{samples}" + (f"_{config.network_tag}" if config.network_tag else "")
        state.code[phase] = code_version()
        flags = sampled_flags(config, samples)
        progress(f"{phase_title(phase)}: a coordinator ({' '.join(flags)}) and {len(models)} node(s)")
        started = time.monotonic()
        with _cluster(config, phase) as cluster:
            address = cluster.start_coordinator(synth_model="none", extra=flags)
            state.nodes[phase] = _start_nodes(cluster, config, models, threads)
            warm = [asyncio.run(warm_up(p.address)) for p in cluster.processes if p.name != "coordinator"]
            progress(f"  warm-up generations (not measured): {', '.join(f'{w:.1f}s' for w in warm)}")
            state.meta[phase] = _phase_meta(state, {
                "coordinator_flags": ["--synth-model", "none", *flags], "models": list(models),
                "threads_per_node": threads, "samples": samples})
            try:
                asyncio.run(ask_all(address, state.eval_problems, phase, send_labels=False,
                                    timeout_s=config.question_timeout_s, progress=progress, sink=state.records))
            finally:
                state.phase_wall_s[phase] = round(time.monotonic() - started, 1)
                state.meta[phase]["loadavg_after"] = list(_loadavg())
            state.fitness[phase] = asyncio.run(node_fitness(address))


def _run_paired(state: BenchState, progress: Callable[[str], None]) -> None:
    """The node alone and the network, both up, asked each problem in turn (see ``paired`` above)."""
    from dellm.coordinator.sandbox import SubprocessSandbox

    config = state.config
    kind, samples, models = config.alone_prompts[0], config.samples[0], config.sampled_models
    alone_phase = ALONE_PREFIX + kind
    network_phase = f"{SAMPLES_PREFIX}{samples}" + (f"_{config.network_tag}" if config.network_tag else "")
    alone_threads, threads = config.node_threads(1), config.node_threads(len(models))
    state.code["paired"] = code_version()
    progress(f"paired: {alone_phase} ({config.alone_model}, {alone_threads} thread(s)) and {network_phase} "
             f"({', '.join(models)}, {threads} thread(s) each), problem by problem")
    started = time.monotonic()
    with _cluster(config, "paired-alone") as alone_cluster, _cluster(config, f"paired-{network_phase}") as cluster:
        spec = node_spec(node_name(config.alone_model), config.alone_model, config, alone_threads)
        node = alone_cluster.start_node(spec, ready_timeout=300.0)
        flags = sampled_flags(config, samples)
        address = cluster.start_coordinator(synth_model="none", extra=flags)
        state.nodes[alone_phase] = [f"{spec.name} ({config.alone_model}, {spec.backend}, {alone_threads} thread(s)), "
                                    "alone"]
        state.nodes[network_phase] = _start_nodes(cluster, config, models, threads)
        warm = [asyncio.run(warm_up(p.address)) for p in [*alone_cluster.processes, *cluster.processes]
                if p.name != "coordinator"]
        progress(f"  warm-up generations (not measured): {', '.join(f'{w:.1f}s' for w in warm)}")
        state.meta[alone_phase] = _phase_meta(state, {
            "prompt": kind, "model": config.alone_model, "threads": alone_threads, "max_tokens": config.max_tokens,
            "temperature": 0.0, "paired_with": network_phase})
        state.meta[network_phase] = _phase_meta(state, {
            "coordinator_flags": ["--synth-model", "none", *flags], "models": list(models),
            "threads_per_node": threads, "samples": samples, "paired_with": alone_phase})
        try:
            asyncio.run(_ask_paired(state, node.address, spec.name, kind, address, (alone_phase, network_phase),
                                    SubprocessSandbox(), progress))
        finally:
            for phase in (alone_phase, network_phase):
                state.phase_wall_s[phase] = round(time.monotonic() - started, 1)
                state.meta[phase]["loadavg_after"] = list(_loadavg())
        state.fitness[network_phase] = asyncio.run(node_fitness(address))


async def _ask_paired(state: BenchState, node_address: str, node: str, kind: str, coordinator: str,
                      phases: tuple[str, str], runner: ProgramRunner, progress: Callable[[str], None]) -> None:
    import grpc

    from dellm.protos import dellm_pb2_grpc

    config = state.config
    alone_phase, network_phase = phases
    async with grpc.aio.insecure_channel(node_address) as channel, \
            DellmClient(coordinator, ClientConfig(ask_timeout_s=config.question_timeout_s)) as client:
        stub = dellm_pb2_grpc.NodeServiceStub(channel)
        names = await client.node_names()

        async def alone(problem: Problem) -> QuestionRecord:
            return await ask_alone(stub, problem, alone_phase, kind, node, runner, config.max_tokens,
                                   config.question_timeout_s)

        async def network(problem: Problem) -> QuestionRecord:
            return await ask_problem(client, problem, network_phase, names, False)

        for number, problem in enumerate(state.eval_problems, start=1):
            first, second = (alone, network) if number % 2 else (network, alone)
            records = [await first(problem), await second(problem)]
            state.records.extend(records)
            a, b = sorted(records, key=lambda r: r.phase != alone_phase)
            right = {p: sum(r.correct for r in state.records if r.phase == p) for p in phases}
            progress(f"  [paired {number}/{len(state.eval_problems)}] #{problem.index}: label {problem.label}; alone "
                     f"{_fmt_number(a.predicted)} in {a.latency_s:.1f}s, network {_fmt_number(b.predicted)} in "
                     f"{b.latency_s:.1f}s; right so far {right[alone_phase]} vs {right[network_phase]}")


def _phase_meta(state: BenchState, setup: dict[str, Any]) -> dict[str, Any]:
    """What a new-style run says about itself: its command, slice, setup and the load it ran under."""
    config = state.config
    return {"command": state.command, "slice": [config.offset, config.offset + config.n], "data": str(config.data),
            "setup": setup, "loadavg_before": list(_loadavg()), "started_unix": round(time.time(), 1)}


def run_gsm8k_bench(config: BenchConfig, *, command: str = "", progress: Callable[[str], None] | None = None,
                    runs: Sequence[str] = DEFAULT_RUNS) -> dict[str, Any]:
    """Run the benchmark, write ``results.json``, ``summary.md`` and ``accuracy.png`` to ``config.out``,
    and return the results. Raises BenchError for nonsense parameters (before starting anything);
    on Ctrl-C the clusters are stopped and what was measured is written before KeyboardInterrupt goes on."""
    say = progress or (lambda message: log.info("%s", message))
    validate_config(config, runs)
    config = replace(config, out=Path(config.out), data=Path(config.data))
    problems = load_problems(config.data, config.offset, config.n + config.train_n)  # one read, two slices
    eval_problems, train_problems = problems[:config.n], problems[config.n:]
    config.out.mkdir(parents=True, exist_ok=True)
    state = BenchState(config, command, eval_problems, train_problems, load_before=_loadavg())
    clock = time.monotonic()
    try:
        for run in runs:
            if run == "alone":
                _run_alone(state, say)
            elif run == "sampled":
                _run_sampled(state, say)
            elif run == "paired":
                _run_paired(state, say)
            else:
                _run_phase(state, run, say)
    except KeyboardInterrupt:
        state.interrupted = True
        raise
    except (ClusterError, OSError) as exc:
        state.failure = str(exc)
        raise
    finally:
        state.wall_s = round(time.monotonic() - clock, 1)
        state.load_after = _loadavg()
        results = build_results(state)
        write_outputs(results, config.out)
    return results


def _loadavg() -> tuple[float, ...]:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return ()



# ---------------------------------------------------------------------------------------------
# The results: what ran, where, and what it measured (report.py writes them out)
# ---------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "platform": platform.platform(),
        "python": platform.python_version(), "gpu": "none used (llama.cpp on the CPU)",
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
        info["cpu_model"] = model
    except OSError:
        pass
    try:
        import llama_cpp

        info["llama_cpp_python"] = llama_cpp.__version__
    except ImportError:
        pass
    return info


def build_results(state: BenchState) -> dict[str, Any]:
    config = state.config
    summaries = {}
    seen = list(dict.fromkeys(r.phase for r in state.records))
    for phase in [p for p in PHASES if p in seen] + [p for p in seen if p not in PHASES]:
        records = [r for r in state.records if r.phase == phase]
        summaries[phase] = {**summarize(records), "nodes": state.nodes.get(phase, state.nodes.get("learned", [])),
                            "fitness_at_end": state.fitness.get(phase, []), "wall_s": state.phase_wall_s.get(phase)}
    eval_range = [config.offset, config.offset + config.n]
    train_range = [config.offset + config.n, config.offset + config.n + config.train_n]
    config_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k != "scripts"}
    config_dict["scripts"] = {k: str(v) for k, v in config.scripts.items()}
    config_dict["redundancy"] = config.network_redundancy()
    config_dict["threads_single"] = config.node_threads(1)
    config_dict["threads_network"] = config.node_threads(len(config.models))
    return {
        "benchmark": "gsm8k",
        "command": state.command,
        "config": config_dict,
        "slices": {"evaluation": eval_range, "training": train_range,
                   "note": "0-based problem indices, end exclusive; the two slices never overlap"},
        "machine": {**machine_info(), "loadavg_before": list(state.load_before),
                    "loadavg_after": list(state.load_after)},
        "code": state.code,
        "started_unix": round(state.started_unix, 1),
        "wall_s": state.wall_s,
        "phase_wall_s": state.phase_wall_s,
        "interrupted": state.interrupted,
        "failure": state.failure,
        "summary": summaries,
        "runs": {phase: {**meta, "wall_s": state.phase_wall_s.get(phase)} for phase, meta in state.meta.items()},
        "paired_latency": paired_latency(state.records, state.meta),
        "records": [asdict(r) for r in state.records],
    }


def paired_latency(records: Sequence[QuestionRecord], meta: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """For each network phase run paired with a phase alone: the per-problem latency ratios network / alone,
    their median, and the ratio of the two medians."""
    out: dict[str, Any] = {}
    for phase, m in meta.items():
        other = m.get("setup", {}).get("paired_with")
        if not other or not phase.startswith(SAMPLES_PREFIX):
            continue
        alone = {r.index: r.latency_s for r in records if r.phase == other and r.latency_s}
        network = {r.index: r.latency_s for r in records if r.phase == phase and r.latency_s}
        common = sorted(alone.keys() & network.keys())
        if not common:
            continue
        ratios = [network[i] / alone[i] for i in common]
        out[phase] = {"alone": other, "pairs": len(common), "median_ratio": round(statistics.median(ratios), 3),
                      "p50_ratio": round(statistics.median(network[i] for i in common)
                                         / statistics.median(alone[i] for i in common), 3)}
    return out
