"""Status codes of the serving contract, without a transport.

The core's codes (cpp/status.h) are a subset of these, with the same numbers: gRPC's numbering, which the
Open Inference Protocol and the HTTP mappings share. Model management, the servables and the metrics raise and
count these; only a front end turns one into its transport's status (ranking_service.grpc_status), so nothing
below the front ends imports grpc.
"""

from __future__ import annotations

import enum


class StatusCode(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RequestError(Exception):
    """A request this server must refuse, with the status to answer and a message that names the field."""

    def __init__(self, code: StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
