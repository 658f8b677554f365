"""Hands the driver's tokenized data to a trainer that started before the data was ready.

Ray Train takes about 10 s to bring up its controller and workers (process starts, torch imports, the
process group), and the driver about as long to read, tokenize and report the data. One after the
other they double the wait for the first step, so ``rmray.train.run`` starts the trainer first and
gives it each dataset as a callable (Ray Train's ``GenDataset``): the controller calls it once the
workers are up, and the call waits here until the driver has put the materialized datasets in.

Payload the driver puts (once): ``{"datasets": {name: MaterializedDataset}, "info": {...}}`` on
success, ``{"error": "..."}`` when preparing the data failed -- the callable then raises, which Ray
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


def await_dataset(handoff, name: str):
    """The dataset callable Ray Train's controller calls when the workers are up (blocks until ready)."""
    return ray.get(handoff.get.remote("datasets"))[name]
