"""Operations endpoints: `/healthz` (the process serves), `/readyz` (it can do its job), `/metrics`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller.metrics import ControllerMetrics


@dataclass(frozen=True)
class Readiness:
    nats_connected: bool
    state_rebuilt: bool
    role: str  # "leader", "standby" or "unknown" (leader election has not decided yet)

    @property
    def ready(self) -> bool:
        # a standby needs no rebuilt state to be ready: it rebuilds when it takes over
        return self.nats_connected and (self.role == "standby" or (self.role == "leader" and self.state_rebuilt))

    def as_dict(self) -> dict[str, object]:
        return {"ready": self.ready, "nats_connected": self.nats_connected, "state_rebuilt": self.state_rebuilt, "role": self.role}


class OpsServer:
    def __init__(self, metrics: ControllerMetrics, readiness: Callable[[], Readiness], host: str = "0.0.0.0", port: int = 9090) -> None:
        self.metrics = metrics
        self.readiness = readiness
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> int:
        """Start serving; returns the bound port (useful with port 0)."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        readiness = self.readiness()
        return web.json_response(readiness.as_dict(), status=200 if readiness.ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
