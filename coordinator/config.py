"""Every tunable of the coordinator in one place, with the reason for each default.

Only ``coordinator.cli`` reads flags and environment; everything else receives these.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DecomposeConfig:
    max_chunks: int = 8  # more parts than this are merged into the last chunk
    max_query_chars: int = 4000  # longer queries are refused with INVALID_ARGUMENT


@dataclass(frozen=True)
class RouteConfig:
    latency_weight: float = 0.7  # the seed's score: 0.7 x normalized latency ...
    fitness_weight: float = 0.3  # ... + 0.3 x (1 - fitness)
    redundancy: int = 2  # nodes per chunk above the complexity threshold
    redundancy_threshold: float = 0.35  # chunks at least this complex get `redundancy` nodes
    # Nodes for a chunk whose value the coordinator computes itself: the exact check is the second opinion,
    # and when the answer is wrong, escalation asks other models (DispatchConfig.escalation_nodes).
    checked_redundancy: int = 1
    default_latency_ms: float = 1000.0  # prior for a node whose latency is not measured yet
    # Exploration, so that a new node gets tried and a recovered one gets another chance:
    # "thompson" samples each node's success rate from its Beta posterior (prior centred on its
    # fitness), "ucb" adds an optimism bonus to the fitness of rarely judged nodes, "none" is pure
    # exploitation. Measured (scripts/bench_fitness_growth.py): UCB at this weight settles on the
    # first good node it meets; Thompson keeps looking and finds better ones.
    exploration: str = "thompson"
    thompson_prior_strength: float = 2.0  # pseudo-trials the fitness prior is worth
    exploration_weight: float = 0.15  # UCB bonus scale: w * sqrt(ln(1 + all trials) / (1 + node trials))
    seed: int = 0  # Thompson sampling's random stream: the same seed routes the same way
    # Quarantine: a node whose fitness at an operation fell below this, after at least
    # quarantine_min_trials judged answers there, gets none of that work while any other node can
    # take it. Without it the seed's score (latency weighs 0.7) keeps a fast wrong node in front.
    quarantine_fitness: float = 0.2
    quarantine_min_trials: int = 5
    quarantine_probe_rate: float = 0.02  # chance a quarantined node is considered anyway: it may have recovered
    # At scale a decision scores a shortlist, not every node: the shortlist_size best idle nodes by a
    # ranking rebuilt at most every shortlist_refresh_s (busy nodes ranked above them come too, with their
    # queue counted), plus shortlist_explorers live nodes drawn at random so that every node gets tried.
    # Networks of up to shortlist_size live nodes are scored whole.
    shortlist_size: int = 32
    shortlist_explorers: int = 4
    shortlist_refresh_s: float = 0.5
    # Evidence-weighted fitness: the seed's 0.7/0.3 holds while nothing is known; once the candidates'
    # fitness at the operation is judged (the best-known candidate's trials there), the fitness weight
    # grows toward fitness_weight_cap as trials / (trials + evidence_half_trials), taken from the latency
    # weight (the two still sum to the same). At 20 trials: 0.43/0.57, so a node proven right (0.9) is no
    # longer outranked by a 3x faster node proven wrong (0.3); between nodes equally right, speed still
    # decides. A cap at or below fitness_weight turns this off.
    fitness_weight_cap: float = 0.7
    evidence_half_trials: float = 10.0  # judged answers at which the fitness weight is half-way to the cap
    # Truth from diversity: a chunk no exact check can judge (all but arithmetic) that gets two or more
    # nodes gets the strongest available model among them, and distinct models before a second copy of
    # one (two copies agreeing prove less than two models agreeing). Strength is the model's pooled
    # success rate at the operation once every candidate model has strength_min_trials judged answers
    # there, else its size read from its name (1.5b > 0.5b > 270m > 135m). False: the score alone picks.
    diversity: bool = True
    strength_min_trials: int = 10


@dataclass(frozen=True)
class StallConfig:
    """When a node's stream counts as stalled and is cut (coordinator/pipeline/stall.py)."""

    enabled: bool = True
    check_s: float = 0.1  # how often a stream is looked at
    idle_factor: float = 3.0  # idle limit: this x the node's usual answer time, or x the answer already in
    idle_min_s: float = 5.0  # ... at least this, from the node's own history
    after_answer_min_s: float = 1.0  # ... at least this, once another node on the chunk has answered
    rate_window_s: float = 1.0  # the token rate is judged after this long streaming
    min_rate: float = 0.5  # tokens a second, whatever the others do (a 1.5B model on a busy laptop: ~3)
    # once another node answered: at least this share of its token rate (a 135M model streams ~10x a 1.5B one)
    rate_fraction: float = 0.05
    extra_penalties: int = 1  # a stalled node gets this many wrong-answer updates more than a wrong answer


@dataclass(frozen=True)
class DispatchConfig:
    max_tokens: int = 96  # per chunk answer; small models ramble past this
    temperature: float = 0.0  # greedy: redundancy compares models, not samples
    answer_timeout_s: float = 60.0  # whole-stream deadline for one node answer
    first_token_timeout_s: float = 20.0  # a node silent this long is treated as failed
    max_attempts: int = 4  # nodes tried per chunk slot before the chunk fails
    # Bounds on one node answer: a node that streams past them is cut off and penalised.
    max_answer_pieces: int = 2048  # streamed messages (a node may not stream forever)
    max_answer_bytes: int = 64 * 1024  # UTF-8 bytes of answer text
    # Hedging: a node still streaming after hedge_factor x its usual answer time (at least
    # hedge_min_s) gets a second node racing it; the first whole answer wins, the other is cancelled.
    hedge_factor: float = 3.0
    hedge_min_s: float = 2.0
    # Small coder models answer with code unless told not to; this keeps answers short and votable.
    system_prompt: str = "You are a concise assistant. Answer directly in plain text, without code."
    # Math chunks are answered with a short program the coordinator runs in its sandbox (program-aided
    # arithmetic): the coder models write good Python, and the executed value is what is voted on.
    program_system_prompt: str = ("You are a careful assistant. You solve arithmetic by writing a short Python "
                                  "program, then you state its result.")
    # Arithmetic the coordinator checks exactly is asked for one line of Python, the instruction and a few
    # examples here rather than in each prompt: a node keeps its system prompts evaluated, so the request costs
    # only the task's tokens. The examples make the 0.5B coder write the expression rather than a value it
    # worked out (on 37 computations: 36 expressions and no wrong value, against 11 expressions and 6 wrong
    # values with the instruction after the task).
    expression_system_prompt: str = (
        "You are a careful assistant. You turn arithmetic into one line of Python for a calculator to run. Reply "
        "with only a ```python code block holding one line, answer = <expression>, built from the numbers as "
        "given; do not work out the result yourself. No explanations.\n\nExamples:\n"
        "What is 48 plus 17? -> answer = 48 + 17\n"
        "Calculate 12% of 350 -> answer = 12 / 100 * 350\n"
        "Divide 84 by 7 -> answer = 84 / 7\n"
        "What is 9 squared? -> answer = 9 ** 2\n"
        "What is the square root of 81? -> answer = 81 ** 0.5\n"
        "Triple 21 -> answer = 21 * 3\n"
        "Take 30 away from 95 -> answer = 95 - 30\n"
        "What is the average of 4, 8 and 9? -> answer = (4 + 8 + 9) / 3")
    program_max_tokens: int = 192  # a program plus its answer line; a word problem's program is ~100 tokens
    expression_max_tokens: int = 48  # arithmetic the coordinator checks exactly: one line, answer = <expression>
    # When the coordinator's exact value contradicts every answer, up to this many more nodes are asked
    # (other models first, then higher fitness at the operation) before the coordinator serves the value itself.
    escalation_nodes: int = 2
    # How long a query waits for those nodes when the coordinator has the value to serve (its exact check):
    # past it they are cancelled and the checked value is served, saying so. A 1.5B node on one thread takes
    # 1.5-2 s for one line of code alone and 4.5-7.4 s while the other chunks run (the compound benchmark's
    # p95 tail). None: wait for them. An answer that could not be used at all is always escalated in full.
    escalation_budget_s: float | None = 2.0
    # Self-consistency for word problems (math the coordinator cannot check exactly; pipeline/consistency.py):
    # up to this many answers by four methods (a program run in the sandbox, worked steps in words, a PAL-style
    # solution() function, plan-and-solve steps), each once greedy, then in turn sampled at sample_temperature with
    # seeds of their own. The first, the greedy program, is asked alone of the strongest model's node and settles
    # the chunk when its number is plausible; otherwise the rest go out over the nodes (a node may answer several
    # in turn) until words and a program agree ahead of the rest. 1 turns it off: one greedy program, as for other
    # chunks.
    samples: int = 5
    sample_temperature: float = 0.6
    reasoning_max_tokens: int = 320  # worked steps in words and the answer line; GSM8K's need ~100-250 tokens
    planned_reasoning_max_tokens: int = 416  # the same after a list of the quantities and the question
    function_program_max_tokens: int = 288  # a solution() function with a comment per quantity, and its call
    stall: StallConfig = field(default_factory=StallConfig)  # slow and silent nodes are cut (pipeline/stall.py)


@dataclass(frozen=True)
class RewardConfig:
    correct_reward: float = 0.05  # the seed's +0.05 ...
    wrong_reward: float = -0.05  # ... and -0.05
    max_speed_bonus: float = 0.05  # added to a correct answer, linearly less the slower it was
    speed_reference_ms: float = 10_000.0  # an answer this slow earns no speed bonus
    fitness_decay: float = 0.9  # fitness = 0.9 x old + 0.1 x score(reward)
    initial_fitness: float = 0.5


@dataclass(frozen=True)
class SynthesisConfig:
    max_tokens: int = 96  # two to four sentences; more could not be written within the budget anyway
    temperature: float = 0.0
    # Every chunk result is settled (and shown) before synthesis starts, so a merged paragraph is worth only
    # a short wait: past this the model is cancelled and the template answer is served (the demo's synthesis
    # took 10.8 s of 15.6 s). Wall time from the start of synthesis, waiting for the model's lock included.
    # 0 or None: no budget. 1.5 s: the seed asks for the whole query under 5 s (and issue 13 under 3 s), and
    # the 0.5B model writes a two-step summary in about that on two cores when nothing else runs.
    time_budget_s: float | None = 1.5
    # A model that overran its budget this many times among its last 10 tries, and more often than it kept
    # within it, is not waited for: the template is served at once (saving the whole budget on a machine too
    # busy to synthesize in time), and every probe_every-th such query tries the model in the background, so
    # that it is waited for again once it keeps within its budget more often than not (OverrunRecord).
    skip_after_overruns: int = 3
    probe_every: int = 10


@dataclass(frozen=True)
class HealthConfig:
    interval_s: float = 1.0  # between two rounds of checks
    timeout_s: float = 0.8  # deadline of one check
    max_missed: int = 2  # misses in a row before an up node is marked down (~2 s after it dies)
    ttl_s: float = 120.0  # a node down this long is dropped from the live set
    last_seen_write_s: float = 5.0  # refresh last_seen in the registry at most this often per node


@dataclass(frozen=True)
class AdmissionConfig:
    """Limits on joining (coordinator/admission.py) and how long the registry remembers a node."""

    joins_per_s: float = 20.0  # Join calls a second from one peer address, on average (heartbeats included)
    join_burst: int = 100  # ... and at once: a host starting many nodes
    new_ids_burst: int = 32  # new node ids one peer address may register at once ...
    new_ids_per_min: float = 32.0  # ... and then a minute (a flood of 1000 ids gets 32 in)
    max_nodes: int = 1000  # node ids held (up or down, not gone); a new one past it is refused
    # Canaries a new node must answer right before it gets any work (a node with that many right answers
    # already is judged); until then it is "probation": health-checked, sent a canary every
    # probation_interval_s, never routed to. 0: none (the library default, so that scripted test nodes get
    # work at once; dellm-coordinator --probation-canaries turns it on).
    probation_canaries: int = 0
    probation_interval_s: float = 5.0
    # Seconds a node being admitted may spend evaluating the coordinator's system prompts into its prompt
    # cache before it is registered (coordinator/warmup.py). 0: no warm-up (the library default, like
    # probation, so that scripted test nodes answer only what a test asks; dellm-coordinator warms for
    # WARM_BUDGET_S unless --warm-budget says otherwise).
    warm_budget_s: float = 0.0
    retention_s: float = 7 * 24 * 3600.0  # a node gone this long is pruned: its fitness kept in the archive


# dellm-coordinator's default warm-up per admitted node, under a node's 20 s Join timeout: the 1.5B coder on
# one thread evaluates its four system prompts (about 330 tokens, the one-line-code prompt's examples most of
# them) in about 9.5 s, longer while other nodes start beside it. A node not warmed in time is admitted all
# the same, and a prompt it could not finish in what is left is not started (coordinator/warmup.py).
WARM_BUDGET_S = 14.0


@dataclass(frozen=True)
class CoordinatorConfig:
    listen: str = "127.0.0.1:50050"
    cluster: str = "default"  # only nodes of this cluster are admitted
    decompose: DecomposeConfig = field(default_factory=DecomposeConfig)
    route: RouteConfig = field(default_factory=RouteConfig)
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    rpc_timeout_s: float = 5.0  # Info, Feedback and other unary calls to nodes
    feedback_timeout_s: float = 5.0
    feedback_linger_s: float = 0.25  # a node's feedback is gathered this long and sent in one call
    shutdown_grace_s: float = 5.0  # in-flight Ask streams get this long on SIGTERM
    node_down_after_failures: int = 3  # consecutive failed streams before a node stops getting work
    accept_labels: bool = False  # benchmark mode: trust AskRequest.reference_answer as ground truth
    canary_interval_s: float = 60.0  # mean seconds between canary chunks (known answers); 0 disables
    max_queries: int = 256  # queries in flight at once; more are refused with RESOURCE_EXHAUSTED
    max_queries_per_client: int = 16  # the same, per client address
    # Math chunks are answered with a short program, run in the coordinator's sandbox, and judged by
    # what it computes (coordinator/pipeline/execute.py); off: nodes are judged by the number they state.
    program_aided: bool = True
