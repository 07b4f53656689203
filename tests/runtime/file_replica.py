"""A replica process without vLLM: the real adapter follower (runtimes.adapters) with an engine that
only reads the adapter's files, so a test can stall a load on a FIFO and kill the process mid-load.

    python -m tests.runtime.file_replica REPORT_EVERY_S   (settings from STOKEHOLD_* variables)
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from events.adapters import Target
from events.options import NatsOptions
from runtimes.adapters import AdapterFollower, follow, settings_from_env
from templates.schema import LoraLimits


def _read_all(directory: Path) -> None:
    for file in sorted(directory.iterdir()):
        file.read_bytes()  # a FIFO blocks here until someone writes it


class FileEngine:
    async def load(self, name: str, path: str) -> str | None:
        await asyncio.to_thread(_read_all, Path(path))
        return None

    async def unload(self, name: str) -> None:
        return None


async def main(report_every_s: float) -> None:
    settings = settings_from_env()
    assert settings is not None, "set STOKEHOLD_DEPLOYMENT"

    async def unset(*_: object) -> None:
        return None

    target = Target(settings.template, settings.version, LoraLimits(max_loras=4, max_rank=16))
    follower = AdapterFollower(settings, target, FileEngine(), unset, report_every_s=report_every_s)
    client, task = await follow(follower, NatsOptions())
    print("following", flush=True)
    try:
        await task
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1])))
