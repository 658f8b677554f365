"""One id per attempt of the worker group, the same on every rank.

A restarted worker group (a failure under ``max_failures``) must start a new pass over the data stream
from its checkpoint's position, not continue the pass the failed attempt left half-read; the stream
tells passes apart by this id (``rmray.data.stream.RowStream``)."""

from __future__ import annotations

import uuid

import torch.distributed as dist


def attempt_id(rank: int) -> str:
    """Rank 0's random id, broadcast to every rank (one collective at set-up)."""
    box = [uuid.uuid4().hex[:12] if rank == 0 else None]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]
