"""``dellm bench gsm8k``: how well one node, the network, and the network after learning solve GSM8K.

The modules, each importing only those before it:

- ``data``     the GSM8K file: problems and their numeric labels (the ``####`` line)
- ``scoring``  pure figures: right or wrong, error kinds, the project's one ``percentile``, a run's summary
- ``alone``    one node process asked directly, no coordinator: the single-node baseline (two prompts)
- ``report``   ``results.json``, ``summary.md`` and ``accuracy.png``, rendered from the results alone
- ``runner``   the configuration, the clusters and the runs; ``run_gsm8k_bench`` ties them together

This package re-exports what the ``dellm`` command line and the tests import.
"""

from __future__ import annotations

from dellm.client.bench.alone import PROMPT_KINDS
from dellm.client.bench.data import DEFAULT_DATA, BenchError, Problem, count_problems, load_problems, parse_label
from dellm.client.bench.report import baseline_phase, baseline_table, merge_results, summary_table
from dellm.client.bench.runner import (
    DEFAULT_ALONE_MODEL,
    DEFAULT_MAX_TOKENS,
    DEFAULT_MODELS,
    DEFAULT_N,
    DEFAULT_OUT,
    DEFAULT_RUNS,
    DEFAULT_SAMPLED_MODELS,
    DEFAULT_SAMPLES,
    DEFAULT_SINGLE_MODEL,
    DEFAULT_TRAIN_N,
    RUNS,
    BenchConfig,
    run_gsm8k_bench,
    validate_config,
)
from dellm.client.bench.scoring import (
    QuestionRecord,
    error_kind,
    is_correct,
    percentile,
    summarize,
    wilson_interval,
)

__all__ = [
    "DEFAULT_ALONE_MODEL",
    "DEFAULT_DATA",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MODELS",
    "DEFAULT_N",
    "DEFAULT_OUT",
    "DEFAULT_RUNS",
    "DEFAULT_SAMPLED_MODELS",
    "DEFAULT_SAMPLES",
    "DEFAULT_SINGLE_MODEL",
    "DEFAULT_TRAIN_N",
    "PROMPT_KINDS",
    "RUNS",
    "BenchConfig",
    "BenchError",
    "Problem",
    "QuestionRecord",
    "baseline_phase",
    "baseline_table",
    "count_problems",
    "error_kind",
    "is_correct",
    "load_problems",
    "merge_results",
    "parse_label",
    "percentile",
    "run_gsm8k_bench",
    "summarize",
    "summary_table",
    "validate_config",
    "wilson_interval",
]
