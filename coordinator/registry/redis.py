"""The shared registry: one Redis that several coordinators use at once.

A node is a hash ``{prefix}:node:{id}`` (info as JSON, fitness, latency_ms (absent until measured),
state, last_seen, answers, correct, failures, failure_streak) and its id is in the set ``{prefix}:nodes``;
a query is ``{prefix}:query:{id}`` (JSON) that expires after 30 days. Every write also bumps the
counter ``{prefix}:version`` and records it for the node in the sorted set ``{prefix}:changed``, so a
coordinator keeps its routing table fresh by reading only the nodes changed since its last look.

Every read-modify-write is atomic across processes: upsert, set_state and record_answer are Lua
scripts (one step on the server); apply_reward runs the caller's Python ``update`` between WATCH and
MULTI/EXEC and starts over when another writer touched the node in between.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError
from redis.retry import Retry

from dellm.coordinator.errors import RegistryUnavailableError, UnknownNodeError, UnknownQueryError
from dellm.coordinator.registry.base import NodeTable, QueryRecord
from dellm.coordinator.types import NodeRecord, OpStats
from dellm.protos.wire import NodeDescription, NodeState

logger = logging.getLogger(__name__)

SOCKET_TIMEOUT_S = 5.0  # one command, once connected
CONNECT_TIMEOUT_S = 3.0  # one TCP connect (+ handshake)
QUERY_TTL_S = 30 * 24 * 3600  # query records are kept for 30 days
MAX_REWARD_ATTEMPTS = 100  # WATCH/EXEC rounds before apply_reward gives up
TABLE_REFRESH_S = 0.1  # routing's table reads the change log at most this often

# The change log every write ends with. KEYS: version counter, changed set; ARGV: node id.
# The last two KEYS are the log's, the last ARGV the node id: ends every write script, and alone (_TOUCH)
# ends apply_reward's MULTI.
_TOUCH_IN_SCRIPT = """
redis.call('ZADD', KEYS[#KEYS], redis.call('INCR', KEYS[#KEYS - 1]), ARGV[#ARGV])
"""
_TOUCH = _TOUCH_IN_SCRIPT + "return 1"

# KEYS: node, nodes-set, archive, version, changed; ARGV: info JSON, now, initial fitness, node id.
# A known node keeps its figures; a pruned one gets them back from its archive.
_UPSERT = """
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('RENAME', KEYS[3], KEYS[1])
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'info', ARGV[1], 'state', 'up', 'last_seen', ARGV[2], 'failure_streak', '0')
else
  redis.call('HSET', KEYS[1], 'info', ARGV[1], 'fitness', ARGV[3], 'state', 'up', 'last_seen', ARGV[2],
             'answers', '0', 'correct', '0', 'failures', '0', 'failure_streak', '0')
end
redis.call('SADD', KEYS[2], ARGV[4])
""" + _TOUCH_IN_SCRIPT + """
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: node, version, changed; ARGV: state, now ('' = keep last_seen), node id. Returns 0 for an unknown node.
_SET_STATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'last_seen', ARGV[2]) end
""" + _TOUCH_IN_SCRIPT + """
return 1
"""

# KEYS: node, version, changed; ARGV: latency_ms ('' = not measured), failed ('1'/'0'), alpha, now, node id.
# Same arithmetic, in the same order, as SqliteRegistry; %.17g keeps every bit of the double.
_RECORD_ANSWER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local failed = ARGV[2] == '1'
if ARGV[1] ~= '' and not failed then
  local latency = tonumber(ARGV[1])
  local old = redis.call('HGET', KEYS[1], 'latency_ms')
  if old then
    local alpha = tonumber(ARGV[3])
    latency = (1 - alpha) * tonumber(old) + alpha * latency
  end
  redis.call('HSET', KEYS[1], 'latency_ms', string.format('%.17g', latency))
end
redis.call('HINCRBY', KEYS[1], 'answers', 1)
if failed then
  redis.call('HINCRBY', KEYS[1], 'failures', 1)
  redis.call('HINCRBY', KEYS[1], 'failure_streak', 1)
else
  redis.call('HSET', KEYS[1], 'failure_streak', '0')
end
redis.call('HSET', KEYS[1], 'last_seen', ARGV[4])
""" + _TOUCH_IN_SCRIPT + """
return redis.call('HGETALL', KEYS[1])
"""


class RewardContentionError(RuntimeError):
    """apply_reward lost the WATCH race MAX_REWARD_ATTEMPTS times in a row; nothing was written."""


def redact_url(url: str) -> str:
    """The URL without its password or query string, safe for logs and error messages."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    if parts.username or parts.password:
        host = f"{parts.username or ''}:***@{host}" if parts.password else f"{parts.username}@{host}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class RedisRegistry:
    """Registry in a Redis shared by several coordinators; ``prefix`` namespaces the keys.

    Unlike SqliteRegistry, opening one does not mark nodes down: other coordinators are live on the
    same Redis. A connection or timeout failure raises RegistryUnavailableError. The client retries a
    command once after a connection error (a stale pooled connection after a server restart).
    """

    def __init__(self, url: str, *, initial_fitness: float = 0.5, prefix: str = "dellm") -> None:
        self._url = redact_url(url)
        self._initial_fitness = initial_fitness
        self._prefix = prefix
        self._client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
        )
        self._upsert = self._client.register_script(_UPSERT)
        self._set_state = self._client.register_script(_SET_STATE)
        self._record_answer = self._client.register_script(_RECORD_ANSWER)
        self._touch = self._client.register_script(_TOUCH)
        self._log_keys = [f"{prefix}:version", f"{prefix}:changed"]  # the change log (see _TOUCH)
        self._table: NodeTable | None = None  # routing's view, kept fresh from the change log
        self._table_version = 0
        self._table_read_at = 0.0
        self.table_refresh_s = TABLE_REFRESH_S
        with self._reachable():
            self._client.ping()
        logger.info("registry on %s (prefix %r)", self._url, prefix)

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """Translate redis-py's connection and timeout errors into RegistryUnavailableError."""
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise RegistryUnavailableError(f"registry at {self._url} is unavailable: {exc}") from exc

    def _node_key(self, node_id: str) -> str:
        return f"{self._prefix}:node:{node_id}"

    @staticmethod
    def _record(fields: dict[str, str]) -> NodeRecord:
        latency = fields.get("latency_ms")
        operations = {key.split(":")[1] for key in fields if key.startswith("op:")}
        op_stats = {
            op: OpStats(float(fields[f"op:{op}:fitness"]), int(fields.get(f"op:{op}:trials", 0)),
                        int(fields.get(f"op:{op}:successes", 0)))
            for op in operations
        }
        return NodeRecord(
            NodeDescription(**json.loads(fields["info"])),
            fitness=float(fields["fitness"]),
            latency_ms=None if latency is None else float(latency),
            state=fields["state"],
            last_seen=float(fields["last_seen"]),
            answers=int(fields["answers"]),
            correct=int(fields["correct"]),
            failures=int(fields["failures"]),
            failure_streak=int(fields["failure_streak"]),
            op_stats=op_stats,
        )

    @classmethod
    def _from_flat(cls, flat: list[str]) -> NodeRecord:
        """A record from a script's HGETALL reply: [field, value, field, value, ...]."""
        return cls._record(dict(zip(flat[::2], flat[1::2], strict=True)))

    def upsert_node(self, info: NodeDescription, *, now: float) -> NodeRecord:
        args = [json.dumps(asdict(info)), repr(float(now)), repr(float(self._initial_fitness)), info.node_id]
        with self._reachable():
            flat = self._upsert(keys=[self._node_key(info.node_id), f"{self._prefix}:nodes",
                                      f"{self._prefix}:archived:{info.node_id}", *self._log_keys], args=args)
        return self._seen(self._from_flat(flat))

    def set_state(self, node_id: str, state: str, *, now: float | None = None) -> None:
        args = [state, "" if now is None else repr(float(now)), node_id]
        with self._reachable():
            found = self._set_state(keys=[self._node_key(node_id), *self._log_keys], args=args)
        if not found:
            raise UnknownNodeError(node_id)
        if self._table is not None and state != NodeState.UP:
            self._table.discard(node_id)  # routing stops at once; the change log brings the rest

    def get(self, node_id: str) -> NodeRecord:
        with self._reachable():
            fields = cast(dict[str, str], self._client.hgetall(self._node_key(node_id)))
        if not fields:
            raise UnknownNodeError(node_id)
        return self._record(fields)

    def list_nodes(self) -> list[NodeRecord]:
        with self._reachable():
            node_ids = sorted(cast(set[str], self._client.smembers(f"{self._prefix}:nodes")))
            pipe = self._client.pipeline(transaction=True)  # one consistent snapshot of all hashes
            for node_id in node_ids:
                pipe.hgetall(self._node_key(node_id))
            rows: list[dict[str, str]] = pipe.execute()
        return [self._record(fields) for fields in rows if fields]

    def record_answer(
        self, node_id: str, latency_ms: float | None, *, failed: bool, alpha: float, now: float | None = None,
    ) -> NodeRecord:
        args = ["" if latency_ms is None else repr(float(latency_ms)), "1" if failed else "0",
                repr(float(alpha)), repr(time.time() if now is None else now), node_id]
        with self._reachable():
            flat = self._record_answer(keys=[self._node_key(node_id), *self._log_keys], args=args)
        if flat is None:
            raise UnknownNodeError(node_id)
        return self._seen(self._from_flat(flat))

    def apply_reward(
        self, node_id: str, reward: float, correct: bool | None, update: Callable[[float], float],
        operation: str = "",
    ) -> tuple[float, float]:
        key = self._node_key(node_id)
        with self._reachable(), self._client.pipeline() as pipe:
            for attempt in range(1, MAX_REWARD_ATTEMPTS + 1):
                try:
                    pipe.watch(key)
                    raw: Any = pipe.hget(key, "fitness")  # immediate while watching
                    if raw is None:
                        raise UnknownNodeError(node_id)
                    before = float(raw)
                    after = update(before)  # if it raises, leaving the pipeline unwatches: nothing written
                    op_raw: Any = pipe.hget(key, f"op:{operation}:fitness") if operation else None
                    pipe.multi()
                    pipe.hset(key, "fitness", repr(float(after)))
                    pipe.hincrby(key, "correct", 1 if correct else 0)
                    if operation:
                        op_after = update(before if op_raw is None else float(op_raw))
                        pipe.hset(key, f"op:{operation}:fitness", repr(float(op_after)))
                        pipe.hincrby(key, f"op:{operation}:trials", 1)
                        pipe.hincrby(key, f"op:{operation}:successes", 1 if correct else 0)
                    self._touch(keys=self._log_keys, args=[node_id], client=pipe)
                    pipe.execute()
                    return before, after
                except WatchError:
                    logger.debug("fitness of %s changed under us (attempt %d); retrying", node_id, attempt)
                    time.sleep(random.uniform(0, 0.001 * min(attempt, 20)))  # jitter spreads the contenders
        raise RewardContentionError(
            f"fitness of {node_id} on {self._url} kept changing; gave up after {MAX_REWARD_ATTEMPTS} attempts"
        )

    # --- routing's view ----------------------------------------------------------------

    def table(self) -> NodeTable:
        """The live nodes for routing, refreshed at most every ``table_refresh_s`` from the change log:
        one read of the nodes changed since the last look (by any coordinator), not of all of them."""
        now = time.monotonic()
        if self._table is not None and now - self._table_read_at < self.table_refresh_s:
            return self._table
        with self._reachable():
            if self._table is None:
                version = int(cast(str | None, self._client.get(self._log_keys[0])) or 0)  # before the read
                self._table, self._table_version = NodeTable(self.list_nodes()), version
            else:
                self._table_version, changed = self.changes_since(self._table_version)
                for record in changed:
                    self._table.put(record)
        self._table_read_at = now
        return self._table

    def changes_since(self, version: int) -> tuple[int, list[NodeRecord]]:
        """The nodes written after change-log ``version``, and the newest version among them."""
        with self._reachable():
            entries = cast(list[tuple[str, float]], self._client.zrangebyscore(
                self._log_keys[1], f"({version}", "+inf", withscores=True))
            if not entries:
                return version, []
            pipe = self._client.pipeline(transaction=True)
            for node_id, _ in entries:
                pipe.hgetall(self._node_key(node_id))
            rows: list[dict[str, str]] = pipe.execute()
        return int(max(score for _, score in entries)), [self._record(fields) for fields in rows if fields]

    def _seen(self, record: NodeRecord) -> NodeRecord:
        """A record this handle just wrote goes into its routing table at once."""
        if self._table is not None:
            self._table.put(record)
        return record

    def prune(self, node_id: str) -> None:
        with self._reachable():
            if not self._client.exists(self._node_key(node_id)):
                raise UnknownNodeError(node_id)
            with self._client.pipeline(transaction=True) as pipe:
                pipe.rename(self._node_key(node_id), f"{self._prefix}:archived:{node_id}")
                pipe.srem(f"{self._prefix}:nodes", node_id)
                pipe.execute()
            self._touch(keys=self._log_keys, args=[node_id])
        if self._table is not None:
            self._table.discard(node_id)

    def node_credential(self, node_id: str) -> str | None:
        with self._reachable():
            return cast(str | None, self._client.hget(f"{self._prefix}:credentials", node_id))

    def bind_credential(self, node_id: str, digest: str) -> None:
        with self._reachable():
            self._client.hset(f"{self._prefix}:credentials", node_id, digest)

    def save_query(self, record: QueryRecord) -> None:
        payload = json.dumps(asdict(record))
        with self._reachable():
            self._client.set(f"{self._prefix}:query:{record.query_id}", payload, ex=QUERY_TTL_S)

    def get_query(self, query_id: str) -> QueryRecord:
        with self._reachable():
            payload = cast(str | None, self._client.get(f"{self._prefix}:query:{query_id}"))
        if payload is None:
            raise UnknownQueryError(query_id)
        return QueryRecord(**json.loads(payload))

    def close(self) -> None:
        self._client.close()
