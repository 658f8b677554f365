"""Hands the driver's data stream to a trainer that started before the data was ready.

Ray Train takes about 10 s to bring up its controller and workers (process starts, torch imports, the
process group), the workers a few more to import transformers and load the model, while the driver
loads the tokenizer and sets up the stream (reading everything first, with ``stream_data=false``,
takes as long as the data's size). One after the other they add up, so ``rmray.train.run`` starts the
trainer first; each rank builds its model and then waits here for the data.

Payload the driver puts (once): ``{"data": {"stream": RowStream actor, "info": {...}}}`` on success,
``{"error": "..."}`` when preparing the data failed -- the read then raises in every rank, which Ray
Train does not retry, so the run ends and the driver re-raises the original error.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray


@ray.remote(num_cpus=0)
class DataHandoff:
    """A value set once and read any number of times (a restarted worker group reads it again)."""

    def __init__(self):
        self._ready = asyncio.Event()
        self._payload: dict = {}

    async def put(self, payload: dict) -> None:
        self._payload = payload
        self._ready.set()

    async def get(self, key: str) -> Any:
        await self._ready.wait()
        if "error" in self._payload:
            raise RuntimeError(f"the driver could not prepare the data: {self._payload['error']}")
        return self._payload[key]
