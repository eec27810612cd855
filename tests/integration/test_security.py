"""Authenticated, encrypted clusters over real gRPC in one process: the cluster token on every
protected RPC of both servers, Feedback only from the joined coordinator, TLS and mutual TLS."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dellm.client.api import ClientConfig, DellmClient
from dellm.client.errors import AuthError, UnavailableError
from dellm.coordinator.config import CoordinatorConfig
from dellm.node.advertise import txt_properties  # the record a node advertises
from dellm.node.config import NodeConfig
from dellm.node.daemon import join_coordinator
from dellm.protos import dellm_pb2, dellm_pb2_grpc
from dellm.protos.security import (
    INVALID_TOKEN,
    MISSING_TOKEN,
    SecurityConfig,
    SecurityError,
    read_token_file,
    token_digest,
    token_refusal,
)
from dellm.protos.transport import channel
from tests.conftest import script
from tests.security_fixtures import (
    TOKEN,
    Pki,
    SecureCluster,
    cluster_security,
    make_pki,
    secure_cluster,
    user_security,
)

RIGHT = [{"pattern": "(?i)10% (interest )?(of|on)", "reply": "10% of $1000 is $100. Answer: 100"}]
QUERY = "What is 10% of 1000?"
Call = Callable[[grpc.aio.Channel, tuple[tuple[str, str], ...]], Awaitable[Any]]


def _coordinator(channel: grpc.aio.Channel) -> dellm_pb2_grpc.CoordinatorServiceStub:
    return dellm_pb2_grpc.CoordinatorServiceStub(channel)


def _node(channel: grpc.aio.Channel) -> dellm_pb2_grpc.NodeServiceStub:
    return dellm_pb2_grpc.NodeServiceStub(channel)


async def _drain(stream: Any) -> list[Any]:
    return [message async for message in stream]


# Every RPC of both services, each with a request that is valid enough to reach the servicer.
PROTECTED: dict[str, tuple[str, Call]] = {
    "coordinator Ask": ("coordinator", lambda ch, md: _drain(_coordinator(ch).Ask(
        dellm_pb2.AskRequest(query=QUERY), metadata=md, timeout=10))),
    "coordinator Feedback": ("coordinator", lambda ch, md: _coordinator(ch).Feedback(
        dellm_pb2.FeedbackRequest(query_id="no-such-query", correct=True), metadata=md, timeout=5)),
    "coordinator ListNodes": ("coordinator", lambda ch, md: _coordinator(ch).ListNodes(
        dellm_pb2.ListNodesRequest(), metadata=md, timeout=5)),
    "coordinator Join": ("coordinator", lambda ch, md: _coordinator(ch).Join(
        dellm_pb2.JoinRequest(info=dellm_pb2.NodeInfo(node_id="j" * 32, address="127.0.0.1:9")), metadata=md,
        timeout=5)),
    "coordinator Leave": ("coordinator", lambda ch, md: _coordinator(ch).Leave(
        dellm_pb2.LeaveRequest(node_id="no-such-node"), metadata=md, timeout=5)),
    "node Generate": ("node", lambda ch, md: _drain(_node(ch).Generate(
        dellm_pb2.GenerateRequest(prompt="What is 10% of 1000?", max_tokens=4), metadata=md, timeout=5))),
    "node Feedback": ("node", lambda ch, md: _node(ch).Feedback(
        dellm_pb2.NodeFeedbackRequest(query_id="q", chunk_id="c1", prompt="p", answer="a"), metadata=md,
        timeout=5)),
    "node Info": ("node", lambda ch, md: _node(ch).Info(dellm_pb2.InfoRequest(), metadata=md, timeout=5)),
}


async def call_status(address: str, call: Call, metadata: tuple[tuple[str, str], ...]) -> tuple[grpc.StatusCode, str]:
    """The status ``call`` ends with, over a plain channel that adds nothing of its own."""
    async with grpc.aio.insecure_channel(address) as plain:
        try:
            await call(plain, metadata)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def token_cluster(tmp_path: Path) -> AsyncIterator[SecureCluster]:
    """A coordinator and (added by the test) nodes that all require TOKEN; plaintext."""
    cluster = await secure_cluster(tmp_path, SecurityConfig(token=TOKEN))
    try:
        yield cluster
    finally:
        await cluster.close()


@pytest.fixture
async def protected(token_cluster: SecureCluster) -> dict[str, str]:
    """The addresses of a token-protected coordinator and of one joined token-protected node."""
    node = await token_cluster.add_node("a", script(RIGHT))
    return {"coordinator": token_cluster.address, "node": node.address}


@pytest.mark.parametrize("rpc", list(PROTECTED))
async def test_every_protected_rpc_needs_the_token(protected: dict[str, str], rpc: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server, call = PROTECTED[rpc]
    code, details = await call_status(protected[server], call, ())
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN)
    code, details = await call_status(protected[server], call, (("x-dellm-token", TOKEN + "x"),))
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, INVALID_TOKEN)
    code, details = await call_status(protected[server], call, (("x-dellm-token", TOKEN),))
    assert code != grpc.StatusCode.UNAUTHENTICATED, details  # past the check (NOT_FOUND and the like are fine)
    assert f"refused /dellm.v1.{'CoordinatorService' if server == 'coordinator' else 'NodeService'}/" in caplog.text
    assert TOKEN not in caplog.text


def _one_off(token: str, at: int) -> str:
    return token[:at] + ("a" if token[at] != "a" else "b") + token[at + 1:]


# Tokens that are wrong, or almost right, sent as call metadata: (metadata, the refusal expected).
BAD_TOKENS: dict[str, tuple[tuple[tuple[str, str], ...], str]] = {
    "missing": ((), MISSING_TOKEN),
    "empty": ((("x-dellm-token", ""),), MISSING_TOKEN),
    "other key (authorization)": ((("authorization", f"Bearer {TOKEN}"),), MISSING_TOKEN),
    "one char off, last": ((("x-dellm-token", _one_off(TOKEN, len(TOKEN) - 1)),), INVALID_TOKEN),
    "one char off, first": ((("x-dellm-token", _one_off(TOKEN, 0)),), INVALID_TOKEN),
    "one char off, middle": ((("x-dellm-token", _one_off(TOKEN, len(TOKEN) // 2)),), INVALID_TOKEN),
    "upper case": ((("x-dellm-token", TOKEN.upper()),), INVALID_TOKEN),
    "prefix (all but the last char)": ((("x-dellm-token", TOKEN[:-1]),), INVALID_TOKEN),
    "prefix (first char)": ((("x-dellm-token", TOKEN[:1]),), INVALID_TOKEN),
    "suffix added": ((("x-dellm-token", TOKEN + "0"),), INVALID_TOKEN),
    "trailing space": ((("x-dellm-token", TOKEN + " "),), INVALID_TOKEN),
    "leading space": ((("x-dellm-token", " " + TOKEN),), INVALID_TOKEN),
    "another cluster's token": ((("x-dellm-token", "Zt3kq0-another-cluster-token"),), INVALID_TOKEN),
    "4000 chars": ((("x-dellm-token", TOKEN * (4000 // len(TOKEN))),), INVALID_TOKEN),
    "right and wrong, twice": ((("x-dellm-token", "wrong"), ("x-dellm-token", TOKEN)), INVALID_TOKEN),
}


@pytest.mark.parametrize("server", ["coordinator", "node"])
@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_wrong_and_almost_right_tokens_are_refused_and_never_shown(
        protected: dict[str, str], server: str, case: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    metadata, expected = BAD_TOKENS[case]
    call = PROTECTED["coordinator ListNodes" if server == "coordinator" else "node Info"][1]
    code, details = await call_status(protected[server], call, metadata)
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, expected)
    for _, sent in metadata:
        if len(sent.strip()) >= 8:
            assert sent.strip() not in details and sent.strip() not in caplog.text
    assert TOKEN not in details and TOKEN not in caplog.text


@pytest.mark.parametrize("value", ["tökén-" + TOKEN, TOKEN + "\n", TOKEN + "\r\n", "to ken", "", "\t" + TOKEN],
                         ids=["unicode", "trailing newline", "trailing crlf", "inner space", "empty", "leading tab"])
def test_tokens_grpc_cannot_carry_are_refused_before_any_call(value: str) -> None:
    with pytest.raises(SecurityError) as caught:
        SecurityConfig(token=value)
    assert value.strip() not in str(caught.value) or not value.strip()
    # and were one sent anyway, the server's check refuses it without an error of its own
    assert token_refusal((("x-dellm-token", value),), token_digest(TOKEN)) in (MISSING_TOKEN, INVALID_TOKEN)


def test_the_check_is_exact_and_takes_bytes_or_text() -> None:
    digest = token_digest(TOKEN)
    assert token_refusal((("x-dellm-token", TOKEN),), digest) is None
    assert token_refusal((("x-dellm-token", TOKEN.encode()),), digest) is None
    assert token_refusal((("x-dellm-token", TOKEN + "\n"),), digest) == INVALID_TOKEN
    assert token_refusal((("x-dellm-token", TOKEN.encode() + b"\xff"),), digest) == INVALID_TOKEN
    assert token_refusal(None, digest) == MISSING_TOKEN


def test_the_token_stays_out_of_reprs(tmp_path: Path) -> None:
    security = SecurityConfig(token=TOKEN)
    assert TOKEN not in repr(security) and TOKEN not in repr(NodeConfig(security=security))
    assert TOKEN not in security.describe()


def test_a_token_file_loses_its_newline_and_a_bad_one_is_named(tmp_path: Path) -> None:
    good = tmp_path / "token"
    good.write_text(f"  {TOKEN}\n")
    good.chmod(0o600)
    assert read_token_file(good) == TOKEN
    blank = tmp_path / "blank"
    blank.write_text("\n\n")
    with pytest.raises(SecurityError, match="blank is empty"):
        read_token_file(blank)
    with pytest.raises(SecurityError, match="cannot read the token file"):
        read_token_file(tmp_path / "missing")


async def test_health_and_reflection_stay_open(protected: dict[str, str]) -> None:
    for server, service in (("coordinator", "dellm.v1.CoordinatorService"), ("node", "dellm.v1.NodeService")):
        async with grpc.aio.insecure_channel(protected[server]) as plain:
            reply = await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(service=service),
                                                                   timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stream = reflection_pb2_grpc.ServerReflectionStub(plain).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
            assert service in {s.name async for r in stream for s in r.list_services_response.service}


async def test_a_full_ask_through_a_token_cluster(token_cluster: SecureCluster) -> None:
    for name in ("a", "b"):
        await token_cluster.add_node(name, script(RIGHT))
    async with DellmClient(token_cluster.address, ClientConfig(security=SecurityConfig(token=TOKEN))) as client:
        events = [event async for event in client.ask(QUERY)]
        assert "100" in events[-1].final.answer
        assert {n.info.token_required for n in await client.nodes()} == {True}
    # the coordinator delivered feedback to the nodes it joined: with the token, from its own host
    await token_cluster.wait_for(lambda: sum(s.count() for s in token_cluster.stores.values()) >= 1)


async def test_the_client_maps_unauthenticated_to_auth_error(token_cluster: SecureCluster) -> None:
    for security in (SecurityConfig(), SecurityConfig(token=TOKEN[:-1])):
        async with DellmClient(token_cluster.address, ClientConfig(security=security)) as client:
            with pytest.raises(AuthError) as caught:
                await client.nodes()
        assert caught.value.exit_code == 6 and TOKEN not in str(caught.value)
        assert "UNAUTHENTICATED" in str(caught.value)


async def test_token_required_is_told_truthfully_in_info_and_mdns(token_cluster: SecureCluster) -> None:
    guarded = await token_cluster.add_node("guarded", script(RIGHT))
    open_node = await token_cluster.add_node("open", script(RIGHT), join=False, security=SecurityConfig())
    assert guarded.servicer.info.token_required and not open_node.servicer.info.token_required
    assert txt_properties(guarded.servicer.info)["token_required"] == "1"
    assert txt_properties(open_node.servicer.info)["token_required"] == "0"
    assert TOKEN not in str(txt_properties(guarded.servicer.info))
    async with channel(guarded.address, SecurityConfig(token=TOKEN)) as ch:
        assert (await _node(ch).Info(dellm_pb2.InfoRequest(), timeout=5)).token_required


async def test_a_node_without_the_token_cannot_join(token_cluster: SecureCluster) -> None:
    info = dellm_pb2.NodeInfo(node_id="n" * 32, address="127.0.0.1:9")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await join_coordinator(token_cluster.address, info, 5, SecurityConfig(token="not-the-cluster-token"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_coordinator_without_the_token_does_not_admit_token_nodes(tmp_path: Path) -> None:
    nodes = await secure_cluster(tmp_path, SecurityConfig(token=TOKEN))
    (tmp_path / "open").mkdir()
    open_coordinator = await secure_cluster(tmp_path / "open", SecurityConfig())
    try:
        node = await nodes.add_node("a", script(RIGHT), join=False)
        from dellm.coordinator.errors import AdmissionRejectedError

        with pytest.raises(AdmissionRejectedError, match="requires a token") as caught:
            await open_coordinator.coordinator.coordinator.admit(node.address)  # type: ignore[union-attr]
        assert TOKEN not in str(caught.value)
    finally:
        await open_coordinator.close()
        await nodes.close()


# --- Feedback only from the coordinator the node joined ----------------------------------------------------


def _feedback_call(answer: str = "a") -> Call:
    return lambda ch, md: _node(ch).Feedback(dellm_pb2.NodeFeedbackRequest(
        query_id="q", chunk_id="c1", prompt="What is 2+2?", answer=answer, verdict=dellm_pb2.WRONG), metadata=md,
        timeout=5)


async def test_feedback_from_another_host_than_the_joined_coordinator_is_refused(tmp_path: Path) -> None:
    # The coordinator listens on 127.0.0.2; every connection this process opens comes from 127.0.0.1.
    elsewhere = await secure_cluster(tmp_path, SecurityConfig(token=TOKEN), listen="127.0.0.2:0")
    try:
        node = await elsewhere.add_node("a", script(RIGHT))
        assert elsewhere.address.startswith("127.0.0.2:")
        code, details = await call_status(node.address, _feedback_call(), (("x-dellm-token", TOKEN),))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "only from the coordinator it joined" in details and "127.0.0.2" in details
        assert "refused 127.0.0.1" in details and TOKEN not in details
        # the token is checked first: without it, UNAUTHENTICATED whatever the host
        code, _ = await call_status(node.address, _feedback_call(), ())
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert elsewhere.stores["a"].count() == 0
    finally:
        await elsewhere.close()


async def test_feedback_before_the_first_join_is_refused(token_cluster: SecureCluster) -> None:
    node = await token_cluster.add_node("lonely", script(RIGHT), coordinator="127.0.0.1:9")  # nobody there
    code, details = await call_status(node.address, _feedback_call(), (("x-dellm-token", TOKEN),))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "has not joined it yet" in details


async def test_feedback_from_the_joined_coordinators_host_and_to_unjoined_nodes_is_taken(
        token_cluster: SecureCluster) -> None:
    joined = await token_cluster.add_node("joined", script(RIGHT))
    free = await token_cluster.add_node("free", script(RIGHT), join=False)  # found by mDNS or a static list
    for name, node in (("joined", joined), ("free", free)):
        code, details = await call_status(node.address, _feedback_call(), (("x-dellm-token", TOKEN),))
        assert code == grpc.StatusCode.OK, details
        assert token_cluster.stores[name].count() == 1


# --- TLS and mutual TLS ------------------------------------------------------------------------------------


async def _ask_with(address: str, security: SecurityConfig) -> str:
    async with DellmClient(address, ClientConfig(security=security)) as client:
        events = [event async for event in client.ask(QUERY)]
    return events[-1].final.answer


@pytest.mark.parametrize("token", [TOKEN, None], ids=["tls+token", "tls"])
async def test_tls_without_client_certificates_end_to_end(tmp_path: Path, pki: Pki, token: str | None) -> None:
    tls = await secure_cluster(tmp_path, cluster_security(pki, token=token, mutual=False))
    try:
        await tls.add_node("a", script(RIGHT))
        assert "100" in await _ask_with(tls.address, user_security(pki, token=token, cert=False))
        await tls.wait_for(lambda: tls.stores["a"].count() >= 1)  # feedback over TLS too
        with pytest.raises(UnavailableError, match="closed the connection"):
            await _ask_with(tls.address, SecurityConfig(token=token))  # plaintext client
    finally:
        await tls.close()


@pytest.fixture
async def mutual(tmp_path: Path, pki: Pki) -> AsyncIterator[SecureCluster]:
    cluster = await secure_cluster(tmp_path, cluster_security(pki))
    try:
        await cluster.add_node("a", script(RIGHT))
        await cluster.add_node("b", script(RIGHT))
        yield cluster
    finally:
        await cluster.close()


async def test_mutual_tls_end_to_end(mutual: SecureCluster, pki: Pki) -> None:
    assert "100" in await _ask_with(mutual.address, user_security(pki))
    await mutual.wait_for(lambda: sum(s.count() for s in mutual.stores.values()) >= 1)
    async with channel(mutual.address, user_security(pki, token=None)) as ch:  # health: TLS yes, token no
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


REFUSED_CLIENTS: dict[str, tuple[Callable[[Pki], SecurityConfig], str]] = {
    "no client certificate": (lambda p: user_security(p, cert=False), "closed the connection"),
    "plaintext": (lambda p: SecurityConfig(token=TOKEN), "closed the connection"),
    "untrusted CA": (lambda p: SecurityConfig(token=TOKEN, tls_ca=p.other_ca, tls_cert=p.client.cert,
                                              tls_key=p.client.key), "TLS handshake .* failed"),
    "certificate from another CA": (lambda p: SecurityConfig(token=TOKEN, tls_ca=p.ca, tls_cert=p.other_client.cert,
                                                             tls_key=p.other_client.key), "closed the connection"),
}


@pytest.mark.parametrize("case", list(REFUSED_CLIENTS))
async def test_mutual_tls_refuses_clients_without_a_trusted_certificate(mutual: SecureCluster, pki: Pki,
                                                                        case: str) -> None:
    make, message = REFUSED_CLIENTS[case]
    with pytest.raises(UnavailableError, match=message) as caught:
        await _ask_with(mutual.address, make(pki))
    assert "--tls-" in str(caught.value) and TOKEN not in str(caught.value)


async def test_an_outsider_node_cannot_join_a_mutual_tls_cluster(mutual: SecureCluster, pki: Pki) -> None:
    outsider = SecurityConfig(token=TOKEN, tls_cert=pki.other_server.cert, tls_key=pki.other_server.key,
                              tls_ca=pki.ca)
    info = dellm_pb2.NodeInfo(node_id="o" * 32, address="127.0.0.1:9")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await join_coordinator(mutual.address, info, 5, outsider)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_plaintext_coordinator_cannot_reach_tls_nodes(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "plain").mkdir()
    tls = await secure_cluster(tmp_path, cluster_security(pki, token=None))
    plain = await secure_cluster(tmp_path / "plain", SecurityConfig(), config=CoordinatorConfig())
    try:
        node = await tls.add_node("a", script(RIGHT), join=False)
        from dellm.coordinator.errors import AdmissionRejectedError

        with pytest.raises(AdmissionRejectedError, match="did not answer Info"):
            await plain.coordinator.coordinator.admit(node.address)  # type: ignore[union-attr]
    finally:
        await plain.close()
        await tls.close()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (lambda p, d: {"tls_cert": p.server.cert, "tls_key": p.client.key}, "does not belong to the certificate"),
        (lambda p, d: {"tls_cert": d / "missing.crt", "tls_key": p.server.key}, "cannot read the TLS certificate"),
        (lambda p, d: {"tls_ca": (d / "junk.pem", (d / "junk.pem").write_text("junk"))[0]}, "is not a PEM file"),
        (lambda p, d: {"tls_cert": p.server.cert}, "needs its key"),
    ],
    ids=["key-of-another-cert", "missing-cert", "not-pem", "cert-without-key"],
)
def test_bad_tls_files_are_named(tmp_path: Path, pki: Pki, files: Callable[[Pki, Path], dict[str, Any]],
                                 message: str) -> None:
    with pytest.raises(SecurityError, match=message):
        SecurityConfig(**files(pki, tmp_path)).channel_credentials()
