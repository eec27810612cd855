"""The discovery interface, and the sink that receives what discovery finds."""

from __future__ import annotations

from typing import Protocol

from dellm.protos.wire import NodeDescription


class DiscoverySink(Protocol):
    async def found(self, address: str, advert: NodeDescription | None, *, source: str) -> None:
        """A node may be at ``address``; check it and admit it (errors are handled and logged here)."""
        ...

    async def lost(self, node_id: str, *, source: str) -> None:
        """The node said goodbye or its advertisement expired."""
        ...


class Discovery(Protocol):
    async def start(self, sink: DiscoverySink) -> None: ...

    async def stop(self) -> None: ...
