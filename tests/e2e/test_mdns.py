"""Real mDNS discovery, run inside a private network namespace this test creates.

The cases themselves are in ``mdns_cases.py``; this test runs pytest on them under
``unshare -n`` so that zeroconf binds to the namespace's own loopback and no multicast
reaches the host's interfaces. Where namespaces cannot be made, it skips saying why.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dellm.client.netns import in_private_netns, inside_private_netns, netns_unavailable_reason
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_mdns_cases_in_a_private_network_namespace() -> None:
    if inside_private_netns():
        pytest.skip("already inside the namespace: mdns_cases.py runs directly")
    reason = netns_unavailable_reason()
    if reason is not None:
        if os.environ.get("DELLM_REQUIRE_NETNS") == "1":
            pytest.fail(f"network namespaces are required here but: {reason}")
        pytest.skip(f"real mDNS needs a private network namespace: {reason}")
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "tests/e2e/mdns_cases.py")]
    done = subprocess.run(in_private_netns(argv), cwd=REPO, capture_output=True, text=True, timeout=600)
    print(done.stdout[-8000:], done.stderr[-4000:])
    assert done.returncode == 0, "mDNS cases failed inside the namespace (output above)"
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1]
