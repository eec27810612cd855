"""Announce a node on the LAN over mDNS (python-zeroconf, asyncio API).

The service type is ``_dellm._tcp.local.``; the TXT record carries what a coordinator
needs to decide whether to talk to the node at all (cluster, protocol version, model),
and whether it requires a token, never the token itself.
"""

from __future__ import annotations

import logging
import socket

from dellm.protos import dellm_pb2
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger(__name__)

SERVICE_TYPE = "_dellm._tcp.local."


def txt_properties(info: dellm_pb2.NodeInfo) -> dict[str, str]:
    return {
        "node_id": info.node_id,
        "cluster": info.cluster,
        "model": info.model,
        "backend": info.backend,
        "quantization": info.quantization,
        "context_size": str(info.context_size),
        "protocol_version": str(info.protocol_version),
        "token_required": "1" if info.token_required else "0",
    }


def zeroconf_for(interface: str | None) -> AsyncZeroconf:
    """Bound to one address when given (tests and demos bind 127.0.0.1 in a private namespace)."""
    if interface:
        return AsyncZeroconf(interfaces=[interface], ip_version=IPVersion.V4Only)
    return AsyncZeroconf(ip_version=IPVersion.V4Only)


class MdnsAdvertiser:
    """Registers the node's service on start, and says goodbye on stop."""

    def __init__(self, info: dellm_pb2.NodeInfo, interface: str | None = None) -> None:
        host, _, port = info.address.rpartition(":")
        self._interface = interface
        self._zeroconf: AsyncZeroconf | None = None
        self._service = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{info.name or 'node'}-{info.node_id[:8]}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(host)],
            port=int(port),
            properties=txt_properties(info),
            server=f"dellm-{info.node_id[:12]}.local.",
        )

    async def start(self) -> None:
        self._zeroconf = zeroconf_for(self._interface)
        await self._zeroconf.async_register_service(self._service)
        log.info("advertising %s over mDNS", self._service.name)

    async def stop(self) -> None:
        if self._zeroconf is None:
            return
        try:
            await self._zeroconf.async_unregister_service(self._service)  # the goodbye packet
        finally:
            await self._zeroconf.async_close()
            self._zeroconf = None
