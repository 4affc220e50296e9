"""An arq worker that renames and moves datasets through one client per worker process,
paced together with every other worker of the same key through the worker's own Redis.

Run a worker (as many processes and machines as you like):

    REDIS_URL=redis://localhost:6379/0 NEBIUS_API_KEY=... arq examples.arq_worker.WorkerSettings

and enqueue jobs from anywhere:

    pool = await arq.create_pool(RedisSettings.from_dsn(REDIS_URL))
    await pool.enqueue_job("update_dataset", dataset_id, name="new-name", folder="/archive")
"""

from __future__ import annotations

import os
from typing import Any

from arq.connections import RedisSettings

from nebius_datasets_async import DatasetsClient
from nebius_datasets_async.redis import RedisFlowControl

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")


async def startup(ctx: dict[str, Any]) -> None:
    """One client per worker process, its pace shared through Redis with the whole fleet."""
    ctx["flow"] = RedisFlowControl(REDIS_URL, max_concurrency=32)
    ctx["client"] = DatasetsClient(flow=ctx["flow"])  # key from $NEBIUS_API_KEY


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["client"].aclose()
    await ctx["flow"].aclose()


async def update_dataset(
    ctx: dict[str, Any], dataset_id: str, *, name: str | None = None, folder: str | None = None
) -> dict[str, str]:
    """Rename and/or move one dataset; the job's result is the dataset's new name and folder.
    A failure raises one of the library's exceptions, which arq records as the job's error.
    """
    client: DatasetsClient = ctx["client"]
    dataset = await client.patch_dataset(dataset_id, name=name, folder=folder)
    return {"id": dataset.id, "name": dataset.name, "folder": dataset.folder}


class WorkerSettings:
    functions = [update_dataset]  # noqa: RUF012 - arq reads these class attributes
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    max_jobs = 64
