"""nebius-datasets-async: an asyncio client for the Nebius Token Factory Datasets API.

Rename and move datasets one at a time or by the thousand, with bounded concurrency,
adaptive rate limiting (``docs/flow-control.md``), retries and typed errors::

    async with DatasetsClient() as client:
        dataset = await client.rename("4d89c874...", "new-name")
        report = await client.move_many(["id-1", "id-2"], "/archive")
"""

from ._bulk import BulkOptions, BulkReport, BulkRun, OutcomeStatus, PatchOutcome
from ._call import CallContext, CallStats, StopSignal
from ._client import DEFAULT_BASE_URL, DatasetsClient, __version__
from ._events import BulkProgress
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BulkError,
    ClientClosedError,
    ConflictError,
    DatasetsError,
    EventLoopError,
    InternalServerError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseValidationError,
    RunStoppedError,
    UnprocessableEntityError,
)
from ._flow import Failure, Flow, FlowControl, FlowState, Ticket
from ._models import (
    ColumnSchema,
    ColumnType,
    Dataset,
    DatasetOrigin,
    DatasetStatus,
    DatasetUpdate,
)
from ._protocol import RateLimits, Request, Response
from ._retry import RetryPolicy
from ._transport import Transport

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BulkError",
    "BulkOptions",
    "BulkProgress",
    "BulkReport",
    "BulkRun",
    "CallContext",
    "CallStats",
    "ClientClosedError",
    "ColumnSchema",
    "ColumnType",
    "ConflictError",
    "DEFAULT_BASE_URL",
    "Dataset",
    "DatasetOrigin",
    "DatasetStatus",
    "DatasetUpdate",
    "DatasetsClient",
    "DatasetsError",
    "EventLoopError",
    "Failure",
    "Flow",
    "FlowControl",
    "FlowState",
    "InternalServerError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutcomeStatus",
    "PatchOutcome",
    "PermissionDeniedError",
    "RateLimitError",
    "RateLimits",
    "Request",
    "Response",
    "ResponseValidationError",
    "RetryPolicy",
    "RunStoppedError",
    "StopSignal",
    "Ticket",
    "Transport",
    "UnprocessableEntityError",
    "__version__",
]
