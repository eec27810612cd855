"""Announce a node on the LAN over mDNS (python-zeroconf, asyncio API).

The service type and the TXT record are the wire contract's (dellm.protos.wire); the record carries what a coordinator
needs to decide whether to talk to the node at all (cluster, protocol version, model),
and whether it requires a token, never the token itself.
"""

from __future__ import annotations

import logging
import socket

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from dellm.protos import dellm_pb2
from dellm.protos.wire import SERVICE_TYPE, description_from_proto, encode_txt

log = logging.getLogger(__name__)



def txt_properties(info: dellm_pb2.NodeInfo) -> dict[str, str]:
    """The TXT record of the node ``info`` describes (keys: dellm.protos.wire.TXT_KEYS)."""
    return encode_txt(description_from_proto(info))


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
