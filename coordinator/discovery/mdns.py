"""Browse ``_dellm._tcp.local.`` with python-zeroconf's asyncio API and report what it finds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from dellm.coordinator.discovery.base import DiscoverySink
from dellm.node.advertise import zeroconf_for
from dellm.protos.wire import SERVICE_TYPE, AdvertRejectedError, parse_txt

log = logging.getLogger(__name__)
RESOLVE_TIMEOUT_MS = 3000


class MdnsDiscovery:
    """Admits nodes as they are announced; a goodbye or an expired record marks them lost.

    A rejected advertisement is logged once per service name and reason, not on every
    re-announcement.
    """

    def __init__(self, cluster: str, interface: str | None = None) -> None:
        self._cluster = cluster
        self._interface = interface
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._node_ids: dict[str, str] = {}  # service name -> node id
        self._logged: dict[str, str] = {}  # service name -> last reason logged
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, sink: DiscoverySink) -> None:
        self._zeroconf = zeroconf_for(self._interface)

        def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
            if state_change is ServiceStateChange.Removed:
                node_id = self._node_ids.pop(name, None)
                if node_id is not None:
                    self._spawn(sink.lost(node_id, source="mdns"))
            else:
                self._spawn(self._resolve(zeroconf, service_type, name, sink))

        self._browser = AsyncServiceBrowser(self._zeroconf.zeroconf, [SERVICE_TYPE], handlers=[on_change])
        log.info("browsing %s for cluster %r", SERVICE_TYPE, self._cluster)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reject_once(self, name: str, reason: str) -> None:
        if self._logged.get(name) != reason:
            self._logged[name] = reason
            log.warning("ignoring mDNS service %s: %s", name, reason)

    async def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str, sink: DiscoverySink) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS):
            self._reject_once(name, "could not be resolved")
            return
        addresses = info.parsed_addresses()
        if not addresses or info.port is None:
            self._reject_once(name, "no address in its records")
            return
        try:
            advert = parse_txt(info.properties, f"{addresses[0]}:{info.port}", self._cluster)
        except AdvertRejectedError as exc:
            self._reject_once(name, str(exc))
            return
        self._node_ids[name] = advert.node_id
        self._logged.pop(name, None)
        await sink.found(advert.address, advert, source="mdns")

    async def stop(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._zeroconf is not None:
            await self._zeroconf.async_close()
