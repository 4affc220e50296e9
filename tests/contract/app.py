"""A small, idiomatic FastAPI app of the Datasets API contract, served by uvicorn in tests.

It is ours, written as a FastAPI user would write the service (pydantic models with
``min_length=1``, ``HTTPBearer``, ``HTTPException``), so that the package's fake can be checked
against what FastAPI, Starlette and uvicorn really do.

Run: ``python -m uvicorn tests.contract.app:app`` with ``CONTRACT_API_KEY`` and
``CONTRACT_DATASETS`` (how many records) in the environment.
"""

from __future__ import annotations

import asyncio
import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from nebius_datasets_async.testing import make_dataset

API_KEY = os.environ.get("CONTRACT_API_KEY", "contract-key")
LATENCY = float(os.environ.get("CONTRACT_LATENCY", "0"))
STORE: dict[str, dict[str, Any]] = {}
for index in range(int(os.environ.get("CONTRACT_DATASETS", "100"))):
    record = make_dataset(index)
    STORE[record["id"]] = record
# One record whose integer field a pydantic-based server sends as an integral float.
FLOAT_ID = "float-created-at"
STORE[FLOAT_ID] = make_dataset(0, id=FLOAT_ID, created_at=1760109124.0)

app = FastAPI(title="Datasets contract")
bearer = HTTPBearer(auto_error=False)


class DatasetPatch(BaseModel):
    """The PATCH body: both fields optional, neither empty, nothing else."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1)
    folder: str | None = Field(default=None, min_length=1)


def authorised(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    if credentials is None or credentials.credentials != API_KEY:
        raise HTTPException(status_code=401, detail="Invalid or missing API key")


def find(dataset_id: str) -> dict[str, Any]:
    record = STORE.get(dataset_id)
    if record is None:
        raise HTTPException(status_code=404, detail=f"Dataset {dataset_id} not found")
    return record


@app.get("/v1/datasets/{dataset_id}", dependencies=[Depends(authorised)])
async def get_dataset(dataset_id: str) -> dict[str, Any]:
    if LATENCY:
        await asyncio.sleep(LATENCY)
    return find(dataset_id)


@app.patch("/v1/datasets/{dataset_id}", dependencies=[Depends(authorised)])
async def patch_dataset(dataset_id: str, patch: DatasetPatch) -> dict[str, Any]:
    if LATENCY:
        await asyncio.sleep(LATENCY)
    record = find(dataset_id)
    record.update(patch.model_dump(exclude_none=True))
    return record
