"""ServerTarget: the rollout commands' target (rollout/targets.py) on a running server, through its admin gRPC
service (admin_service.py) with the bearer token. The server applies a change at once (loading a version it
names first), writes rollout.yaml and audits it; a refusal becomes TargetError with the server's status and
message. It answers the same shapes as RepositoryTarget: `models()` dicts, `history()` AuditEntry lists.

TLS: `tls` (ClientTls, client_tls.py: root CA, client certificate and key, server name) for a server whose admin
port serves TLS; its files are read when the target is made. None: plaintext, as before.

A TargetError is one line. An address that answers UNIMPLEMENTED serves gRPC but not the admin service (the
server's gRPC port, most likely): the error says so and names `--admin-port`, the port to give instead.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import grpc

from adrank.admin_messages import policy_fields, policy_of, rollout_message
from adrank.client_tls import ClientTls
from adrank.rollout.audit import AuditEntry
from adrank.rollout.target_error import TargetError
from adrank.v1 import admin_pb2 as pb
from adrank.v1 import admin_pb2_grpc

if TYPE_CHECKING:
    # Only a change needs the policy's schemas (pydantic); listing the models does not load them.
    from adrank.rollout.policy import RolloutPolicy


class ServerTarget:
    def __init__(self, address: str, token: str, timeout_s: float = 120.0, tls: ClientTls | None = None) -> None:
        self._address = address
        if tls is None:
            self._channel = grpc.insecure_channel(address)
        else:
            self._channel = grpc.secure_channel(address, tls.credentials(), options=tls.channel_options())
        self._stub = admin_pb2_grpc.AdminStub(self._channel)
        self._token = token
        # Long: a change that names a version not yet loaded returns once it has loaded and been checked.
        self._timeout_s = timeout_s

    def _call(self, method: str, request: Any, actor: str = "") -> Any:
        metadata = [("authorization", f"Bearer {self._token}")]
        if actor:
            metadata.append(("x-adrank-actor", actor))
        try:
            return getattr(self._stub, method)(request, metadata=metadata, timeout=self._timeout_s)
        except grpc.RpcError as error:
            raise TargetError(self._explained(error)) from error

    def _explained(self, error: grpc.RpcError) -> str:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            return (
                f"{self._address} does not serve the admin API (UNIMPLEMENTED): is it the gRPC port? --server takes"
                " the address of adrank serve's --admin-port (default 8501), open when the server has a token"
            )
        return " ".join(f"{error.code().name}: {error.details()}".split())  # one line, whatever the server said

    def models(self) -> list[dict[str, Any]]:
        response = self._call("ListModels", pb.ListModelsRequest())
        return [
            {
                "model": m.name,
                "versions": [
                    {
                        "version": v.version,
                        "state": v.state,
                        "reason": v.reason,
                        "role": v.role,
                        "integer_kernels": v.integer_kernels,
                    }
                    for v in m.versions
                ],
                "on_disk": list(m.on_disk),
                "policy": policy_fields(m.rollout),
                "routed_stable": m.rollout.routed_stable,
                "error": m.error,
            }
            for m in response.models
        ]

    def policy(self, name: str) -> RolloutPolicy:
        return policy_of(self._call("GetRollout", pb.GetRolloutRequest(model=name)))

    def stable_now(self, name: str) -> int | None:
        return self._call("GetRollout", pb.GetRolloutRequest(model=name)).routed_stable or None

    def history(self, name: str, limit: int | None = None) -> list[AuditEntry]:
        response = self._call("History", pb.HistoryRequest(model=name, limit=limit or 0))
        return [
            AuditEntry(
                model=name,
                actor=e.actor,
                action=e.action,
                reason=e.reason,
                before=json.loads(e.before_json or "null"),
                after=json.loads(e.after_json or "null"),
                figures=json.loads(e.figures_json or "{}"),
                time=e.time,
                cause=e.cause,
                route=json.loads(e.route_json or "null"),
            )
            for e in response.entries
        ]

    def apply(self, name: str, policy: RolloutPolicy, action: str, actor: str, reason: str) -> RolloutPolicy:
        if action == "promote" and policy.stable is not None:
            request = pb.PromoteRequest(model=name, version=policy.stable, reason=reason)
            return policy_of(self._call("Promote", request, actor))
        if action == "rollback":
            return policy_of(self._call("Rollback", pb.RollbackRequest(model=name, reason=reason), actor))
        request = pb.SetRolloutRequest(rollout=rollout_message(name, policy), reason=reason, action=action)
        return policy_of(self._call("SetRollout", request, actor))

    def close(self) -> None:
        self._channel.close()
