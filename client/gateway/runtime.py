"""The gateway's long-lived parts, shared by every route through ``app.state.gateway``."""

from __future__ import annotations

from dellm.client.api import DellmClient
from dellm.client.gateway.config import GatewayConfig
from dellm.client.gateway.errors import ApiError
from dellm.client.gateway.metrics import GatewayMetrics
from dellm.client.gateway.session import AskSession
from dellm.client.gateway.status import StatusBoard


class Gateway:
    """The coordinator client, the status board and the metrics; ``start``/``stop`` around serving."""

    def __init__(self, config: GatewayConfig, client: DellmClient | None = None) -> None:
        self.config = config
        self.client = client or DellmClient(config.coordinator, config.client)
        self.board = StatusBoard(self.client, config)
        self.metrics = GatewayMetrics(lambda: self.board.nodes, self.board.coordinator_up)
        self.board.query_listeners.append(self.metrics.query_summary)  # the network's queries, as the board gets them

    @property
    def model_names(self) -> frozenset[str]:
        """The names a request may give: ``dellm``, and ``dellm:latest`` as Ollama clients write it."""
        return frozenset({self.config.model_name, f"{self.config.model_name}:latest"})

    def check_model(self, model: str) -> None:
        if model not in self.model_names:
            raise ApiError(404, f"the model {model!r} does not exist: this gateway serves the DELLM network as "
                                f"{self.config.model_name!r}", "invalid_request_error", code="model_not_found",
                           param="model")

    def session(self, query: str, api: str) -> AskSession:
        """A query ready to open; refuses text the coordinator would refuse anyway, before calling it."""
        if not query.strip():
            raise ApiError(400, "the question is empty: send a user message with some text", param="messages")
        if len(query) > self.config.max_query_chars:
            raise ApiError(400, f"the question is {len(query)} characters; this gateway takes at most "
                                f"{self.config.max_query_chars}", param="messages")
        return AskSession(self.client, query, api, (self.metrics, self.board), self.board.names)

    async def start(self) -> None:
        self.board.start()

    async def stop(self) -> None:
        await self.board.stop()
        await self.client.close()
