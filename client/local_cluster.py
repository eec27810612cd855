"""Start a coordinator and nodes on loopback as real processes; used by the demo, tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dellm.client.api import ClientConfig, DellmClient
from dellm.protos.security import SecurityConfig

log = logging.getLogger(__name__)
_LISTENING = re.compile(r"(?:listening on|on) (\S+:\d+)\s*$")


class ClusterError(RuntimeError):
    """A process of the local cluster failed to start or to become ready."""


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[str]
    log_path: Path
    address: str = ""

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass(frozen=True)
class NodeSpec:
    name: str
    model: str = ""  # catalogue name or .gguf path; ignored by the scripted backend
    backend: str = "llama_cpp"
    threads: int | None = None
    script: Path | None = None


@dataclass
class LocalCluster:
    """``with LocalCluster(workdir) as c: c.start_coordinator(); c.start_node(...); c.wait_for_nodes(n)``."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dellm-cluster-")))
    python: str = sys.executable
    processes: list[ManagedProcess] = field(default_factory=list)
    coordinator_address: str = ""
    # Real mDNS only inside a private network namespace (see client.netns); otherwise nodes join
    # the coordinator directly and nothing is multicast on the host's interfaces.
    mdns: bool = False
    cluster: str = "default"
    # Security, passed to every process: the token through a file only its owner reads (a flag would
    # show in `ps`), and one TLS certificate for all of them (it must name 127.0.0.1).
    token: str | None = field(default=None, repr=False)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_client_auth: bool = True  # with tls_ca: servers require client certificates (mutual TLS)

    @property
    def security(self) -> SecurityConfig:
        """What this cluster's processes use, and what a client of the cluster needs."""
        return SecurityConfig(token=self.token, tls_cert=self.tls_cert, tls_key=self.tls_key, tls_ca=self.tls_ca,
                              client_auth=self.tls_client_auth)

    def _security_flags(self) -> list[str]:
        flags: list[str] = []
        if self.token is not None:
            token_file = self.workdir / "cluster.token"
            token_file.touch(mode=0o600)
            token_file.chmod(0o600)
            token_file.write_text(self.token + "\n")
            flags += ["--token-file", str(token_file)]
        for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key), ("--tls-ca", self.tls_ca)):
            if path is not None:
                flags += [flag, str(path)]
        if not self.tls_client_auth:
            flags.append("--no-tls-client-auth")
        return flags

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, argv: Sequence[str], ready_timeout: float) -> ManagedProcess:
        log_path = self.workdir / f"{name}.log"
        env = {key: value for key, value in os.environ.items() if key != "DELLM_TOKEN"}  # only what we pass
        env["PYTHONUNBUFFERED"] = "1"
        process = subprocess.Popen(
            [self.python, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True,
        )
        managed = ManagedProcess(name, process, log_path)
        self.processes.append(managed)
        ready = threading.Event()

        def pump() -> None:  # copy output to the log file; note the readiness line
            assert process.stdout is not None
            with log_path.open("w") as out:
                for line in process.stdout:
                    out.write(line)
                    out.flush()
                    match = _LISTENING.search(line.strip()) if line.startswith("dellm-") else None
                    if match and not managed.address:
                        managed.address = match.group(1)
                        ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True, name=f"log-{name}").start()
        if not ready.wait(ready_timeout) or not managed.address:
            tail = managed.log_tail()
            raise ClusterError(f"{name} did not become ready within {ready_timeout:.0f}s "
                               f"(exit code {process.poll()}); last output:\n{tail}")
        return managed

    def start_coordinator(self, *, synth_model: str = "none", extra: Sequence[str] = (),
                          ready_timeout: float = 120.0) -> str:
        argv = ["-m", "dellm.coordinator.cli", "--listen", "127.0.0.1:0", "--registry",
                str(self.workdir / "registry.sqlite3"), "--synth-model", synth_model, "--cluster", self.cluster,
                *self._discovery_flags("mdns"), *self._security_flags(), *extra]
        self.coordinator_address = self._spawn("coordinator", argv, ready_timeout).address
        return self.coordinator_address

    def start_node(self, spec: NodeSpec, *, ready_timeout: float = 120.0) -> ManagedProcess:
        argv = ["-m", "dellm.node.cli", "--backend", spec.backend, "--name", spec.name, "--listen", "127.0.0.1:0",
                "--state-dir", str(self.workdir / "state"), "--cluster", self.cluster,
                *self._discovery_flags("advertise"), *self._security_flags()]
        if self.coordinator_address and not self.mdns:
            argv += ["--coordinator", self.coordinator_address]
        if spec.model:
            argv += ["--model", spec.model]
        if spec.threads:
            argv += ["--threads", str(spec.threads)]
        if spec.script is not None:
            argv += ["--script", str(spec.script)]
        return self._spawn(spec.name, argv, ready_timeout)

    def start_nodes(self, specs: Sequence[NodeSpec], *, ready_timeout: float = 120.0,
                    join_timeout: float = 60.0) -> list[ManagedProcess]:
        """Start ``specs`` one after another, then wait until the coordinator sees them all up."""
        started = [self.start_node(spec, ready_timeout=ready_timeout) for spec in specs]
        self.wait_for_nodes(len(specs), timeout=join_timeout)
        return started

    def write_script(self, name: str, text: str) -> Path:
        """A scripted test-double node's TOML script, written into this cluster's folder."""
        path = self.workdir / f"{name}.toml"
        path.write_text(text)
        return path

    def _discovery_flags(self, role: str) -> list[str]:
        if role == "mdns":
            return ["--discovery", "mdns", "--interface", "127.0.0.1"] if self.mdns else ["--discovery", "none"]
        return ["--advertise", "--interface", "127.0.0.1"] if self.mdns else ["--no-advertise"]

    def node(self, name: str) -> ManagedProcess:
        return next(p for p in self.processes if p.name == name)

    def wait_for_nodes(self, count: int, timeout: float = 60.0) -> None:
        async def poll() -> None:
            deadline = time.monotonic() + timeout
            async with DellmClient(self.coordinator_address, ClientConfig(security=self.security)) as client:
                while True:
                    with contextlib.suppress(Exception):
                        if sum(n.state == "up" for n in await client.nodes()) >= count:
                            return
                    if time.monotonic() > deadline:
                        raise ClusterError(f"fewer than {count} nodes joined within {timeout:.0f}s")
                    await asyncio.sleep(0.1)

        asyncio.run(poll())

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every process (nodes first, then the coordinator), SIGKILL what outlives ``grace``."""
        for managed in reversed(self.processes):
            if managed.process.poll() is None:
                managed.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for managed in self.processes:
            try:
                managed.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", managed.name, grace)
                managed.process.kill()
                managed.process.wait()
        self.processes.clear()
