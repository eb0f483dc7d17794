"""KServeRepository: Triton's model-repository extension of KServe v2 (RepositoryIndex, RepositoryModelLoad,
RepositoryModelUnload), behind the admin token, for every transport (the C++ front end hands its calls here,
the grpc.aio one and the REST paths call it directly).

What each does in adrank, which serves what its repository holds and watches it:
- index: every model of the repository, each version the server knows (loaded, failed, or unloaded on
  request) with Triton's states: READY (serving or routable), LOADING, UNAVAILABLE (with the reason). With
  `ready`, only READY ones.
- load: reads the repository now and serves the model again if it was unloaded on request; NOT_FOUND for a
  model the repository lacks, FAILED_PRECONDITION (with the reasons) if no version of it serves afterwards.
  Triton's load parameters (a config or files sent with the call) are refused: adrank loads only what its
  repository holds (INVALID_ARGUMENT).
- unload: every version of the model unloaded, and kept unloaded — out of the route and of readiness —
  until a load, even though the model stays in the repository (lifecycle/manager.py unload_model).

Access: the caller's `authorization: Bearer <token>` must match the server's admin token (UNAUTHENTICATED
otherwise); a server started without one does not serve the extension (PERMISSION_DENIED, saying so).

Thread-safety: `call` may run on any thread; the manager serializes the changes. Load and unload block for
as long as loading or draining takes: transports run them off their event loop.
"""

from __future__ import annotations

import hmac

from adrank.kserve import grpc_service_pb2 as kserve
from adrank.lifecycle.manager import ModelManager
from adrank.status import RequestError, StatusCode

METHODS = ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")
TRITON_STATES = {"AVAILABLE": "READY", "LOADING": "LOADING", "UNLOADING": "UNAVAILABLE", "FAILED": "UNAVAILABLE"}


class KServeRepository:
    def __init__(self, models: ModelManager, admin_token: str | None) -> None:
        self._models = models
        self._expected = f"Bearer {admin_token}".encode() if admin_token else None

    def call(self, method: str, request: bytes, authorization: str) -> bytes:
        """One call of the extension: its serialized response, or RequestError with the contract's code."""
        self._authorize(authorization)
        if method == "RepositoryIndex":
            return self.index(kserve.RepositoryIndexRequest.FromString(request)).SerializeToString()
        if method == "RepositoryModelLoad":
            load = kserve.RepositoryModelLoadRequest.FromString(request)
            self._check_repository(load.repository_name)
            if load.parameters:
                raise RequestError(
                    StatusCode.INVALID_ARGUMENT,
                    f"parameters: {', '.join(sorted(load.parameters))}: adrank loads only what its repository holds",
                )
            self._models.load_model(load.model_name)
            return kserve.RepositoryModelLoadResponse().SerializeToString()
        if method == "RepositoryModelUnload":
            unload = kserve.RepositoryModelUnloadRequest.FromString(request)
            self._check_repository(unload.repository_name)
            self._models.unload_model(unload.model_name)
            return kserve.RepositoryModelUnloadResponse().SerializeToString()
        raise RequestError(StatusCode.UNIMPLEMENTED, f"method {method} is not part of the repository extension")

    def index(self, request: kserve.RepositoryIndexRequest) -> kserve.RepositoryIndexResponse:
        self._check_repository(request.repository_name)
        response = kserve.RepositoryIndexResponse()
        for model in self._models.describe():
            for version in model["versions"]:
                state = TRITON_STATES.get(version["state"], "UNAVAILABLE")
                if request.ready and state != "READY":
                    continue
                response.models.add(
                    name=model["model"], version=str(version["version"]), state=state, reason=version["reason"]
                )
        if not request.ready:
            for name in self._models.held():
                response.models.add(name=name, state="UNAVAILABLE", reason="unloaded (RepositoryModelUnload)")
        return response

    def _authorize(self, authorization: str) -> None:
        if self._expected is None:
            raise RequestError(
                StatusCode.PERMISSION_DENIED,
                "the model repository extension needs the server's admin token (adrank serve --admin-token-file)",
            )
        if not hmac.compare_digest(authorization.encode(), self._expected):
            raise RequestError(
                StatusCode.UNAUTHENTICATED, "authorization: the repository extension needs 'Bearer <admin token>'"
            )

    @staticmethod
    def _check_repository(name: str) -> None:
        if name:
            raise RequestError(
                StatusCode.INVALID_ARGUMENT, f"repository_name: {name!r}: adrank serves one repository; leave it empty"
            )
