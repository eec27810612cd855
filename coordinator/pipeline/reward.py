"""Stage 6: a verdict on every node answer, the seed's reward, and the fitness update.

Evidence, strongest first: an exact arithmetic check when the chunk's arithmetic can be
read from its text; otherwise agreement with the vote winner when at least two nodes gave
the winning answer. A lone answer, or two that disagree, earn no reward either way:
fitness must not grow from a node agreeing with itself, nor fall on a coin toss. A failed
stream, an empty or degenerate (looping) answer, or a timeout is wrong. Pure: no I/O.
"""

from __future__ import annotations

from dellm.coordinator.config import RewardConfig
from dellm.coordinator.pipeline.answers import (
    answers_match,
    format_number,
    reference_key,
)
from dellm.coordinator.pipeline.assemble import answer_key
from dellm.coordinator.types import ChunkResult, NodeAnswer, RewardDecision, Verdict
from dellm.protos.wire import VERIFIED_SOURCES, FeedbackSource


def speed_bonus(latency_ms: float, config: RewardConfig) -> float:
    return config.max_speed_bonus * max(0.0, 1.0 - latency_ms / config.speed_reference_ms)




def reward_for(verdict: Verdict, latency_ms: float, config: RewardConfig, *, verified: bool = True) -> float:
    """+0.05 when correct, plus the speed bonus only when the answer was verified; -0.05 when wrong."""
    if verdict is Verdict.CORRECT:
        return config.correct_reward + (speed_bonus(latency_ms, config) if verified else 0.0)
    if verdict is Verdict.WRONG:
        return config.wrong_reward
    return 0.0


def update_fitness(old: float, reward: float, config: RewardConfig) -> float:
    """The seed's moving average, 0.9 x old + 0.1 x score, with the reward scored into [0, 1].

    score maps the reward range linearly: a wrong answer (-0.05) scores 0, a correct but
    slow one (+0.05) 2/3, a correct instant one (+0.10) 1. So fitness stays in [0, 1] and
    reads as "how often, and how fast, this node is right".
    """
    low = config.wrong_reward
    high = config.correct_reward + config.max_speed_bonus
    score = min(1.0, max(0.0, (reward - low) / (high - low)))
    return config.fitness_decay * old + (1.0 - config.fitness_decay) * score


def judge_chunk(
    result: ChunkResult, answers: list[NodeAnswer], config: RewardConfig, label: str | None = None
) -> list[RewardDecision]:
    """One decision per node answer to the chunk of ``result``.

    Evidence, strongest first: a ground-truth ``label`` (benchmark mode), the exact value of
    readable arithmetic, a real majority of the vote; otherwise no verdict.
    """
    chunk = result.chunk
    expected = result.expected  # the exact value the coordinator computed (dependency results substituted)
    reference = reference_key(chunk.operation, expected, label)
    winners = set(result.winning_node_ids)  # distinct nodes: a node agreeing with itself proves nothing
    # One vote per answer, in the same order (assemble); a node that answered twice (self-consistency) is
    # judged answer by answer.
    votes = result.votes if len(result.votes) == len(answers) else (None,) * len(answers)
    truth_text = label if label else (format_number(expected) if expected is not None else "")
    decisions: list[RewardDecision] = []
    for answer, vote in zip(answers, votes, strict=True):
        malformed = vote.group < 0 if vote is not None else any(
            v.node_id == answer.node_id and v.group < 0 for v in result.votes)
        if answer.failed or not answer.text.strip() or malformed:
            verdict, source, truth = Verdict.WRONG, FeedbackSource.FAILURE, truth_text
        elif reference is not None:
            right = answers_match(answer_key(answer, chunk), reference)
            source = FeedbackSource.LABEL if label else FeedbackSource.EXACT_CHECK
            verdict, truth = (Verdict.CORRECT if right else Verdict.WRONG), truth_text
        elif len(winners) >= 2:  # a real majority: at least two nodes gave the winning answer
            right = vote.group == result.winning_group if vote is not None else answer.node_id in winners
            verdict = Verdict.CORRECT if right else Verdict.WRONG
            source, truth = FeedbackSource.VOTE, result.answer
        else:
            verdict, source, truth = Verdict.UNKNOWN, FeedbackSource.NONE, ""
        reward = reward_for(verdict, answer.latency_ms, config, verified=source in VERIFIED_SOURCES)
        decisions.append(RewardDecision(answer.node_id, chunk.chunk_id, verdict, reward, source, truth))
    return decisions
