"""The security flags end to end, with real processes: a token- and mutual-TLS-protected cluster, and
the `dellm` CLI asking it with --token/--token-file/$DELLM_TOKEN and --tls-ca/--tls-cert/--tls-key."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dellm.client.local_cluster import LocalCluster, NodeSpec
from tests.conftest import FIXTURES, REPO
from tests.security_fixtures import TOKEN, Pki, make_pki

pytestmark = pytest.mark.slow
GOOD = NodeSpec("good", backend="scripted", script=FIXTURES / "good.toml")
QUERY = "What is 10% of 1000?"


def run(module: str, *args: str, env: dict[str, str] | None = None,
        timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if key != "DELLM_TOKEN"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**clean, **(env or {})})


def tls_flags(pki: Pki, *, cert: bool = True, ca: Path | None = None) -> list[str]:
    flags = ["--tls-ca", str(ca or pki.ca)]
    if cert:
        flags += ["--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)]
    return flags


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def secured(tmp_path: Path, pki: Pki) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "cluster", token=TOKEN, tls_cert=pki.server.cert, tls_key=pki.server.key,
                      tls_ca=pki.ca) as cluster:
        cluster.workdir.mkdir(parents=True, exist_ok=True)
        cluster.start_coordinator()
        cluster.start_node(GOOD)
        cluster.wait_for_nodes(1)
        yield cluster


def test_the_cli_asks_a_token_and_mutual_tls_cluster(secured: LocalCluster, pki: Pki, tmp_path: Path) -> None:
    address = secured.coordinator_address
    done = run("dellm.client.cli", "ask", QUERY, "--coordinator", address, "--token", TOKEN, *tls_flags(pki))
    assert done.returncode == 0, done.stderr
    assert "answer:" in done.stdout and "100" in done.stdout

    listed = run("dellm.client.cli", "nodes", "--json", "--coordinator", address, *tls_flags(pki),
                 env={"DELLM_TOKEN": TOKEN})
    assert listed.returncode == 0, listed.stderr
    (node,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert node["info"]["token_required"] is True and node["state"] == "up"

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # as an editor saves it
    token_file.chmod(0o600)
    from_file = run("dellm.client.cli", "nodes", "--coordinator", address, "--token-file", str(token_file),
                    *tls_flags(pki))
    assert from_file.returncode == 0, from_file.stderr

    logs = "\n".join(p.log_path.read_text() for p in secured.processes)
    assert "token, mutual TLS" in logs  # the servers say how they are guarded ...
    assert TOKEN not in logs  # ... and never with what


@pytest.mark.parametrize(
    ("flags", "env", "exit_code", "message"),
    [
        ([], {}, 6, "this cluster requires a token: pass --token or set DELLM_TOKEN"),
        (["--token", TOKEN[:-1]], {}, 6, "the token is not valid"),
        ([], {"DELLM_TOKEN": TOKEN + "x"}, 6, "the token is not valid"),
        (["--token", "to ken"], {}, 2, "must be visible ASCII"),
        (["--token", TOKEN, "--tls-ca", "CA-UNTRUSTED"], {}, 3, "TLS handshake with .* failed"),
        (["--token", TOKEN, "--tls-ca", "CA"], {}, 3, "--tls-cert and --tls-key"),
        (["--token", TOKEN], {}, 3, "closed the connection"),
    ],
    ids=["no-token", "token-prefix", "wrong-env-token", "malformed-token", "untrusted-ca", "no-client-cert",
         "plaintext"],
)
def test_the_cli_says_clearly_why_it_was_refused(secured: LocalCluster, pki: Pki, flags: list[str],
                                                 env: dict[str, str], exit_code: int, message: str) -> None:
    flags = [{"CA": str(pki.ca), "CA-UNTRUSTED": str(pki.other_ca)}.get(f, f) for f in flags]
    if "--tls-ca" not in flags and exit_code == 6:
        flags += tls_flags(pki)
    done = run("dellm.client.cli", "nodes", "--coordinator", secured.coordinator_address, *flags, env=env)
    assert done.returncode == exit_code, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert re.search(message, done.stderr), done.stderr
    assert TOKEN[:-1] not in done.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--token-file", "/no/such/token"], "cannot read the token file /no/such/token"),
        (["--tls-ca", "CA"], "--tls-ca needs --tls-cert and --tls-key"),
        (["--tls-cert", "CERT"], "needs its key"),
        (["--token", "tök"], "must be visible ASCII"),
        (["--token", "a", "--token-file", "/x"], "not allowed with argument"),
    ],
    ids=["missing-token-file", "ca-without-cert", "cert-without-key", "unicode-token", "token-and-file"],
)
@pytest.mark.parametrize("module", ["dellm.node.cli", "dellm.coordinator.cli"])
def test_servers_refuse_bad_security_flags_at_start(pki: Pki, tmp_path: Path, module: str, flags: list[str],
                                                    message: str) -> None:
    flags = [{"CA": str(pki.ca), "CERT": str(pki.server.cert)}.get(f, f) for f in flags]
    common = (["--backend", "scripted", "--no-advertise", "--state-dir", str(tmp_path)] if module == "dellm.node.cli"
              else ["--synth-model", "none", "--discovery", "none", "--registry", str(tmp_path / "r.sqlite3")])
    done = run(module, "--listen", "127.0.0.1:0", *common, *flags, timeout=30)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
