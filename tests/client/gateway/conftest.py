"""A real coordinator with scripted nodes (tests/conftest.py) and a real gateway in front of it, on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from dellm.client.api import ClientConfig
from dellm.client.gateway.app import RunningGateway, start_gateway
from dellm.client.gateway.config import GatewayConfig
from tests.conftest import Cluster, script

RIGHT = [
    {"pattern": "(?i)savings accounts", "reply": "Online high-yield savings accounts and credit unions.",
     "delay": 0.005},
    {"pattern": "(?i)10% (interest )?(of|on)", "reply": "10% of $1000 is $100. Answer: 100", "delay": 0.005},
]
SEED = "Calculate 10% interest on $1000 then find best savings accounts"


def gateway_config(cluster: Cluster, **changes: object) -> GatewayConfig:
    config = GatewayConfig(coordinator=cluster.address, listen="127.0.0.1:0", node_poll_s=0.2,
                           client=ClientConfig(security=cluster.security))
    return replace(config, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def gateway(cluster: Cluster) -> AsyncIterator[RunningGateway]:
    """Two scripted nodes that answer the seed query right, and a gateway in front of their coordinator."""
    for name in ("alpha", "beta"):
        await cluster.add_node(name, script(RIGHT))
    running = await start_gateway(gateway_config(cluster))
    try:
        yield running
    finally:
        await running.stop()
