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

The evaluation slice is problems ``offset .. offset+n`` for all three runs. A question is right
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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from dellm.client.api import ClientConfig, DellmClient
from dellm.client.bench.data import DEFAULT_DATA, REPO_ROOT, BenchError, Problem, count_problems, load_problems
from dellm.client.bench.report import PHASE_TITLES, write_outputs
from dellm.client.bench.scoring import PHASES, QuestionRecord, error_kind, is_correct, summarize
from dellm.client.errors import DellmError
from dellm.client.local_cluster import ClusterError, LocalCluster, NodeSpec
from dellm.coordinator.pipeline.answers import final_number
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
RUNS = ("single", "network", "learning")  # one cluster each: (a), (b), (c)


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
    backend: str = "llama_cpp"  # "scripted" runs test-double nodes (tests); models then name scripts
    scripts: Mapping[str, Path] = field(default_factory=dict)  # model name -> script, for "scripted"

    def node_threads(self, nodes: int) -> int:
        cores = os.cpu_count() or 1
        return self.threads or max(1, cores // max(1, nodes))

    def network_redundancy(self) -> int:
        return self.redundancy or len(self.models)


def validate_config(config: BenchConfig) -> int:
    """Refuse parameters that cannot give a meaningful run; returns the number of problems in the file."""
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
    if config.offset + config.n + config.train_n > total:
        raise BenchError(f"the training slice (problems {config.offset + config.n} .. "
                         f"{config.offset + config.n + config.train_n}, after the evaluation slice) runs past the "
                         f"{total} problems in {config.data}; lower --train-n or --offset")
    for model in {config.single_model, *config.models}:
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


def _vote_entry(vote: dellm_pb2.Vote, names: Mapping[str, str], label: float) -> dict[str, Any]:
    number = final_number(vote.answer) if vote.answer and not vote.failed else None
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


def _cluster(config: BenchConfig, phase: str) -> LocalCluster:
    workdir = config.out / "work" / phase
    if workdir.exists():
        shutil.rmtree(workdir)  # fresh registry and fresh node state for every run
    workdir.mkdir(parents=True)
    return LocalCluster(workdir=workdir)


def _start_nodes(cluster: LocalCluster, config: BenchConfig, models: Sequence[str], threads: int) -> list[str]:
    started = []
    for model in models:
        spec = node_spec(node_name(model), model, config, threads)
        cluster.start_node(spec, ready_timeout=300.0)
        started.append(f"{spec.name} ({model}, {spec.backend}, {threads} thread(s))")
    cluster.wait_for_nodes(len(models), timeout=120.0)
    return started


def _coordinator_flags(config: BenchConfig, redundancy: int | None, labels: bool = False) -> list[str]:
    flags = ["--max-tokens", str(config.max_tokens)]
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


def run_gsm8k_bench(config: BenchConfig, *, command: str = "", progress: Callable[[str], None] | None = None,
                    runs: Sequence[str] = RUNS) -> dict[str, Any]:
    """Run the benchmark, write ``results.json``, ``summary.md`` and ``accuracy.png`` to ``config.out``,
    and return the results. Raises BenchError for nonsense parameters (before starting anything);
    on Ctrl-C the clusters are stopped and what was measured is written before KeyboardInterrupt goes on."""
    say = progress or (lambda message: log.info("%s", message))
    validate_config(config)
    config = replace(config, out=Path(config.out), data=Path(config.data))
    problems = load_problems(config.data, config.offset, config.n + config.train_n)  # one read, two slices
    eval_problems, train_problems = problems[:config.n], problems[config.n:]
    config.out.mkdir(parents=True, exist_ok=True)
    state = BenchState(config, command, eval_problems, train_problems, load_before=_loadavg())
    clock = time.monotonic()
    try:
        for run in runs:
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
    for phase in PHASES:
        records = [r for r in state.records if r.phase == phase]
        if records:
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
        "records": [asdict(r) for r in state.records],
    }
