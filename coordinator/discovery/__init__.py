"""How the coordinator finds nodes: mDNS on the LAN, a static list, or nodes that Join directly.

Every path ends in the same place: ``Coordinator.admit`` checks the node over gRPC and
adds it to the registry.
"""

from dellm.coordinator.discovery.base import Discovery, DiscoverySink

__all__ = ["Discovery", "DiscoverySink"]
