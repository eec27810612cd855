"""mDNS cases; run only inside a private network namespace (see test_mdns.py).

Real zeroconf on the namespace's loopback, real coordinator and node processes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from dellm.client.local_cluster import LocalCluster, NodeSpec
from dellm.client.netns import inside_private_netns
from dellm.protos.wire import SERVICE_TYPE
from tests.conftest import FIXTURES, REPO

pytestmark = pytest.mark.skipif(not inside_private_netns(),
                                reason="runs only inside a private network namespace (started by test_mdns.py)")
GOOD = FIXTURES / "good.toml"


def scripted(name: str) -> NodeSpec:
    return NodeSpec(name, backend="scripted", script=GOOD)


def nodes(cluster: LocalCluster) -> dict[str, dict]:
    done = subprocess.run([sys.executable, "-m", "dellm.client.cli", "nodes", "--json", "--coordinator",
                           cluster.coordinator_address], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return {n["info"]["name"]: n for n in map(json.loads, done.stdout.splitlines())}


def wait_until(condition, timeout: float = 15.0) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path, mdns=True) as cluster:
        # no canaries: a canary the scripted node answers wrong moves its fitness at a random moment
        cluster.start_coordinator(extra=["--health-interval", "0.5", "--node-ttl", "4", "--canary-interval", "0"])
        yield cluster


def test_nodes_are_found_by_mdns_alone_and_answer(lan: LocalCluster) -> None:
    lan.start_node(scripted("a"))
    lan.start_node(scripted("b"))
    lan.wait_for_nodes(2, timeout=15)
    done = subprocess.run([sys.executable, "-m", "dellm.client.cli", "ask", "What is 10% of 1000?", "--json",
                           "--coordinator", lan.coordinator_address], capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "100" in json.loads(done.stdout.splitlines()[-1])["final"]["answer"]


def test_another_clusters_node_is_not_admitted_and_logged_once(tmp_path: Path, lan: LocalCluster) -> None:
    lan.start_node(scripted("ours"))
    other = LocalCluster(tmp_path / "other", mdns=True, cluster="other")
    (tmp_path / "other").mkdir()
    try:
        other.start_node(scripted("theirs"))
        lan.wait_for_nodes(1)
        time.sleep(3)  # several announcements and health rounds
        assert set(nodes(lan)) == {"ours"}
        log = (lan.workdir / "coordinator.log").read_text()
        assert log.count("cluster 'other'") == 1
    finally:
        other.stop()


def test_goodbye_and_sigkill_stop_routing_and_a_restart_restores_fitness(lan: LocalCluster) -> None:
    first = lan.start_node(scripted("victim"))
    lan.wait_for_nodes(1)
    for _ in range(3):  # earn some fitness, alone
        subprocess.run([sys.executable, "-m", "dellm.client.cli", "ask", "What is 10% of 1000?", "--coordinator",
                        lan.coordinator_address], capture_output=True, timeout=60, cwd=REPO, check=True)
    fitness = nodes(lan)["victim"]["fitness"]
    assert fitness > 0.5
    lan.start_node(scripted("keeper"))
    lan.wait_for_nodes(2)

    first.process.send_signal(signal.SIGKILL)  # no goodbye: health checks must notice
    took = wait_until(lambda: nodes(lan)["victim"]["state"] == "down", timeout=10)
    assert took < 5
    lan.processes.remove(first)

    again = lan.start_node(scripted("victim"))  # same name and state folder: same node id
    wait_until(lambda: nodes(lan)["victim"]["state"] == "up", timeout=15)
    assert nodes(lan)["victim"]["fitness"] == pytest.approx(fitness)

    again.process.send_signal(signal.SIGTERM)  # a clean exit says goodbye over mDNS
    wait_until(lambda: nodes(lan)["victim"]["state"] == "down", timeout=5)
    wait_until(lambda: nodes(lan)["victim"]["state"] == "gone", timeout=15)  # past --node-ttl
    assert nodes(lan)["victim"]["fitness"] == pytest.approx(fitness)  # kept under its id


def _advertise(properties: dict[str, str], name: str) -> tuple[AsyncZeroconf, AsyncServiceInfo]:
    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    info = AsyncServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", addresses=[socket.inet_aton("127.0.0.1")],
                            port=9, properties=properties, server=f"{name}.local.")
    return zc, info


@pytest.mark.parametrize(
    ("properties", "reason"),
    [
        ({"cluster": "default", "model": "m", "backend": "b", "protocol_version": "1"}, "TXT record lacks node_id"),
        ({"node_id": "abc", "cluster": "default", "model": "m", "backend": "b", "protocol_version": "9"},
         "protocol version 9 is not supported"),
        ({"node_id": "ab c!", "cluster": "default", "model": "m", "backend": "b", "protocol_version": "1"},
         "malformed node_id"),
    ],
    ids=["missing-node-id", "unsupported-protocol", "malformed-node-id"],
)
def test_bad_advertisements_are_ignored_and_logged_once(lan: LocalCluster, properties: dict[str, str],
                                                        reason: str) -> None:
    async def announce() -> None:
        zc, info = _advertise(properties, "bogus")
        await zc.async_register_service(info)
        await asyncio.sleep(1.0)
        await zc.async_update_service(info)  # re-announce: must not be logged again
        await asyncio.sleep(1.5)
        await zc.async_unregister_service(info)
        await zc.async_close()

    asyncio.run(announce())
    assert nodes(lan) == {}
    log = (lan.workdir / "coordinator.log").read_text()
    assert log.count(reason) == 1, log[-2000:]


def test_advertised_node_whose_info_does_not_match_is_refused(lan: LocalCluster) -> None:
    real = lan.start_node(NodeSpec("real", backend="scripted", script=GOOD))
    lan.wait_for_nodes(1)
    host, port = real.address.rsplit(":", 1)

    async def announce_forgery() -> None:
        zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        info = AsyncServiceInfo(SERVICE_TYPE, f"forged.{SERVICE_TYPE}", addresses=[socket.inet_aton(host)],
                                port=int(port), server="forged.local.",
                                properties={"node_id": "f" * 32, "cluster": "default", "model": "scripted-good",
                                            "backend": "scripted", "protocol_version": "1"})
        await zc.async_register_service(info)
        await asyncio.sleep(2.0)
        await zc.async_unregister_service(info)
        await zc.async_close()

    asyncio.run(announce_forgery())
    assert set(nodes(lan)) == {"real"}
    assert "does not match what it claimed: node_id" in (lan.workdir / "coordinator.log").read_text()
