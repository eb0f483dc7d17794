"""AdminService: `adrank.v1.Admin` — list the model versions and their state, load and unload versions,
get and change rollouts, read the audit log — over the ModelManager.

It listens on a port of its own (default 8501, loopback unless told otherwise), apart from the Rank
traffic, and only when the server was given an admin token (`--admin-token-file` or $ADRANK_ADMIN_TOKEN):
every call must carry `authorization: Bearer <token>`; the comparison is constant-time
(hmac.compare_digest), and a call without the token, or with another, is answered UNAUTHENTICATED
before any handler runs. Rollout changes are audited with the caller's `x-adrank-actor` metadata. A model
name that is not one (repository/config.py: `check_model_name`; a path, say) is INVALID_ARGUMENT before
anything looks it up.

The handlers run the manager's blocking operations (a load takes seconds; an unload waits for the
version's requests) in worker threads, so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import grpc

from adrank.admin_messages import policy_of, rollout_message
from adrank.lifecycle.manager import ModelManager
from adrank.repository.config import ModelNameError, check_model_name
from adrank.rollout import RolloutPolicy
from adrank.rollout.changes import ChangeError, promote, rollback
from adrank.server.ports import GRPC_NO_REUSEPORT, add_grpc_port
from adrank.server.ranking_service import grpc_status
from adrank.status import RequestError, StatusCode
from adrank.v1 import admin_pb2 as pb
from adrank.v1 import admin_pb2_grpc as pb_grpc

ACTOR_HEADER = "x-adrank-actor"
DEFAULT_ACTOR = "admin-api"


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call that does not carry `authorization: Bearer <token>`."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the admin token is empty")
        self._expected = f"Bearer {token}".encode()

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "admin: a valid 'authorization: Bearer' token is needed"
            )

        self._refusal = grpc.unary_unary_rpc_method_handler(refuse)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        given_bytes = given.encode() if isinstance(given, str) else given
        if hmac.compare_digest(given_bytes, self._expected):
            return await continuation(handler_call_details)
        return self._refusal


class AdminService(pb_grpc.AdminServicer):
    def __init__(self, models: ModelManager) -> None:
        self._models = models

    async def _call(
        self, context: grpc.aio.ServicerContext, work: Callable[[], Any], model: tuple[str, str] | None = None
    ) -> Any:
        """Runs `work` in a thread, its errors as statuses; `model`: (field, name) to check first."""
        try:
            if model is not None:
                try:
                    check_model_name(model[1])
                except ModelNameError as error:
                    raise RequestError(StatusCode.INVALID_ARGUMENT, f"{model[0]}: {error}") from error
            return await asyncio.to_thread(work)
        except RequestError as error:
            await context.abort(grpc_status(error.code), error.message)
        except ChangeError as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"rollout: {error}")
        except ValueError as error:  # a policy that does not validate (pydantic names the field)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"rollout: {error}")

    def _as_applied(self, name: str, policy: RolloutPolicy) -> pb.Rollout:
        """The policy, with the stable version routed now."""
        return rollout_message(name, policy, self._models.registry.rollout(name).stable)

    @staticmethod
    def _actor(context: grpc.aio.ServicerContext) -> str:
        return dict(context.invocation_metadata() or ()).get(ACTOR_HEADER, DEFAULT_ACTOR)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        described = await self._call(context, self._models.describe)
        models = []
        for m in described:
            policy = RolloutPolicy.model_validate(m["policy"])
            models.append(
                pb.ModelStatus(
                    name=m["model"],
                    versions=[
                        pb.VersionStatus(
                            model=m["model"],
                            version=v["version"],
                            state=v["state"],
                            reason=v["reason"],
                            role=v["role"],
                            since_unix_s=v["since"],
                            integer_kernels=v["integer_kernels"],
                        )
                        for v in m["versions"]
                    ],
                    on_disk=m["on_disk"],
                    rollout=rollout_message(m["model"], policy, m["route"]["stable"]),
                    error=m["error"],
                )
            )
        return pb.ListModelsResponse(models=models)

    async def LoadVersion(self, request: pb.VersionRequest, context: grpc.aio.ServicerContext) -> pb.VersionStatus:
        status = await self._call(
            context, lambda: self._models.load_version(request.model, request.version), ("model", request.model)
        )
        return pb.VersionStatus(
            model=status.model,
            version=status.version,
            state=status.state.value,
            reason=status.reason,
            since_unix_s=status.since,
            integer_kernels=status.integer_kernels,
        )

    async def UnloadVersion(self, request: pb.VersionRequest, context: grpc.aio.ServicerContext) -> pb.VersionStatus:
        await self._call(
            context, lambda: self._models.unload_version(request.model, request.version), ("model", request.model)
        )
        return pb.VersionStatus(model=request.model, version=request.version, state="UNLOADED")

    async def GetRollout(self, request: pb.GetRolloutRequest, context: grpc.aio.ServicerContext) -> pb.Rollout:
        policy = await self._call(context, lambda: self._models.policy(request.model), ("model", request.model))
        return self._as_applied(request.model, policy)

    async def SetRollout(self, request: pb.SetRolloutRequest, context: grpc.aio.ServicerContext) -> pb.Rollout:
        name, actor = request.rollout.model, self._actor(context)
        policy = await self._call(
            context,
            lambda: self._models.set_policy(
                name, policy_of(request.rollout), actor, request.action or "set_rollout", request.reason
            ),
            ("rollout.model", name),
        )
        return self._as_applied(name, policy)

    async def Promote(self, request: pb.PromoteRequest, context: grpc.aio.ServicerContext) -> pb.Rollout:
        actor = self._actor(context)

        def work() -> RolloutPolicy:
            policy, action = promote(self._models.policy(request.model), request.version)
            return self._models.set_policy(request.model, policy, actor, action, request.reason)

        policy = await self._call(context, work, ("model", request.model))
        return self._as_applied(request.model, policy)

    async def Rollback(self, request: pb.RollbackRequest, context: grpc.aio.ServicerContext) -> pb.Rollout:
        actor = self._actor(context)

        def work() -> RolloutPolicy:
            history = self._models.audit_log(request.model).entries()
            policy, action = rollback(self._models.policy(request.model), history)
            return self._models.set_policy(request.model, policy, actor, action, request.reason)

        policy = await self._call(context, work, ("model", request.model))
        return self._as_applied(request.model, policy)

    async def History(self, request: pb.HistoryRequest, context: grpc.aio.ServicerContext) -> pb.HistoryResponse:
        def work() -> list[dict[str, Any]]:
            log = self._models.audit_log(request.model)
            return [asdict(e) for e in log.entries(int(request.limit) or None)]

        entries = await self._call(context, work, ("model", request.model))
        return pb.HistoryResponse(
            entries=[
                pb.HistoryEntry(
                    time=e["time"],
                    actor=e["actor"],
                    action=e["action"],
                    reason=e["reason"],
                    before_json=json.dumps(e["before"]),
                    after_json=json.dumps(e["after"]),
                    figures_json=json.dumps(e["figures"]),
                    cause=e["cause"],
                    route_json=json.dumps(e["route"]),
                )
                for e in entries
            ]
        )


class AdminServer:
    """The admin port: AdminService behind the token check; TLS with `credentials` (server/tls.py)."""

    def __init__(
        self,
        host: str,
        port: int,
        token: str,
        models: ModelManager,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self._server = grpc.aio.server(interceptors=[TokenInterceptor(token)], options=[GRPC_NO_REUSEPORT])
        pb_grpc.add_AdminServicer_to_server(AdminService(models), self._server)
        self.port = add_grpc_port(self._server, "admin", host, port, credentials)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace_s: float) -> None:
        await self._server.stop(grace_s)
