"""Shared fixtures: in-process scripted nodes and coordinators on port 0, real gRPC between them."""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from dellm.coordinator.config import CoordinatorConfig
from dellm.coordinator.core import Coordinator
from dellm.coordinator.grpc_server import RunningCoordinator, start_coordinator
from dellm.coordinator.pipeline.synthesize import Synthesizer, TemplateSynthesizer
from dellm.coordinator.registry import SqliteRegistry
from dellm.node.backends.base import InferenceBackend
from dellm.node.backends.scripted import ScriptedBackend
from dellm.node.config import NodeConfig
from dellm.node.daemon import RunningNode, node_info, start_node
from dellm.node.state import FeedbackStore
from dellm.protos.security import SecurityConfig
from tests.redis_server import private_redis_server, redis_server, redis_url  # noqa: F401 (fixtures)

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
MODELS_REQUIRED = os.environ.get("DELLM_REQUIRE_MODELS") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip for want of a model or a library; fail instead under DELLM_REQUIRE_MODELS=1 (CI)."""
    if MODELS_REQUIRED:
        pytest.fail(f"{reason} (DELLM_REQUIRE_MODELS=1)")
    pytest.skip(reason)


def require_modules(*names: str) -> None:
    """Import ``names`` (e.g. "torch", "peft") or skip/fail as :func:`unavailable` says."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            unavailable(f"{name} is not importable: {exc}; install the transformers extra")


def require_model(name: str) -> Path:
    """The cached model file, or skip/fail as :func:`unavailable` says."""
    from dellm.node.models import CATALOGUE, cached_path

    path = cached_path(CATALOGUE[name])
    if not path.exists():
        unavailable(f"model {name} is not pulled ({path}); run `dellm models pull {name}`")
    return path


def script(rules: list[dict[str, Any]], default: str = "I do not know.", model: str = "scripted",
           delay: float = 0.0) -> ScriptedBackend:
    """A scripted test-double backend from inline rules."""
    return ScriptedBackend.from_dict({"model": model, "rule": rules, "default": {"reply": default, "delay": delay}})


@dataclass
class Cluster:
    """An in-process coordinator plus scripted nodes, all over real gRPC on loopback, every one of them
    with ``security`` (a node may be given other settings)."""

    tmp: Path
    config: CoordinatorConfig
    synthesizer: Synthesizer = field(default_factory=TemplateSynthesizer)
    coordinator: RunningCoordinator | None = None
    nodes: dict[str, RunningNode] = field(default_factory=dict)
    stores: dict[str, FeedbackStore] = field(default_factory=dict)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    listen: str = "127.0.0.1:0"

    @property
    def address(self) -> str:
        assert self.coordinator is not None
        return self.coordinator.address

    async def start_coordinator(self) -> RunningCoordinator:
        registry = SqliteRegistry(self.tmp / "registry.sqlite3")
        coordinator = Coordinator(self.config, registry, self.synthesizer, security=self.security)
        self.coordinator = await start_coordinator(coordinator, self.listen)
        return self.coordinator

    async def add_node(self, name: str, backend: InferenceBackend, *, join: bool = True,
                       security: SecurityConfig | None = None, coordinator: str | None = None) -> RunningNode:
        """A node joined to this cluster's coordinator (waited for until it is up), or to ``coordinator``
        (not waited for), or to none."""
        config = NodeConfig(listen="127.0.0.1:0", name=name, state_dir=self.tmp / "state", drain_grace_s=1.0,
                            coordinator=(coordinator or self.address) if join else None,
                            security=self.security if security is None else security)
        store = self.stores[name] = FeedbackStore(self.tmp / f"{name}-feedback.sqlite3")
        node = await start_node(backend, node_info(f"{name:0<32}"[:32], name, backend), store, config)
        self.nodes[name] = node
        if join and coordinator is None:
            assert self.coordinator is not None
            registry = self.coordinator.coordinator.registry
            await self.wait_for(lambda: any(n.info.node_id == node.servicer.info.node_id and n.state == "up"
                                            for n in registry.list_nodes()))
        return node

    async def stop_node(self, name: str) -> None:
        await self.nodes.pop(name).stop(0.1)

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for name in list(self.nodes):
            await self.stop_node(name)
        if self.coordinator is not None:
            await self.coordinator.stop(0.5)
        for store in self.stores.values():
            store.close()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, CoordinatorConfig(canary_interval_s=0))  # canaries only where a test sends them
    await c.start_coordinator()
    try:
        yield c
    finally:
        await c.close()
