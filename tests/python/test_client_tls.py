"""The client side of transport security and of target lists (client_tls.py, client_channel.py): RankClient and
AsyncRankClient over TLS and mTLS, a target list balanced by round_robin that skips a replica gone away, and the
admin commands' --tls-* options.

The servers are in-process grpc servers on 127.0.0.1 with a stand-in Ranking service that answers with its own
number in the model version field (which replica answered) and a health service; certificates are made per
module by certs.py. No timing is asserted: a balancing test first calls until every replica has answered (all
connected: round_robin picks only READY ones), bounded by a call count, then counts.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from certs import KeyPair, Pki
from click.testing import CliRunner
from fake_admin import TOKEN, fake_admin_server
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from adrank.admin_token import TOKEN_ENV
from adrank.cli import main
from adrank.client import AsyncRankClient, RankClient, RankError
from adrank.client_channel import ChannelPlan
from adrank.client_tls import ClientTls, ClientTlsError
from adrank.v1 import ranking_pb2 as pb
from adrank.v1 import ranking_pb2_grpc as pb_grpc

CANDIDATES = {"dense": np.zeros((2, 3), dtype=np.float32)}
# Calls a balancing test makes at most before every replica has answered once (each connects in milliseconds).
WARM_UP_CALLS = 500


class NumberedRanking(pb_grpc.RankingServicer):
    """Answers every requested model with `number` as its version and a score of 0.0 per candidate."""

    def __init__(self, number: int) -> None:
        self.number = number

    def Rank(self, request: pb.RankRequest, context: grpc.ServicerContext) -> pb.RankResponse:
        rows = request.candidates[0].shape[0] if request.candidates else 0
        scores = np.zeros(rows, dtype="<f4").tobytes()
        results = [pb.ModelScores(model=m.name, version=self.number, scores=scores) for m in request.models]
        return pb.RankResponse(request_id=request.request_id, results=results)


@dataclass
class Replica:
    number: int
    target: str  # 127.0.0.1:PORT
    server: grpc.Server

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


@contextmanager
def replica(number: int, credentials: grpc.ServerCredentials | None = None) -> Iterator[Replica]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_RankingServicer_to_server(NumberedRanking(number), server)
    checks = health.HealthServicer()
    checks.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    address = "127.0.0.1:0"
    port = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    server.start()
    try:
        yield Replica(number, f"127.0.0.1:{port}", server)
    finally:
        server.stop(grace=None)


@dataclass(frozen=True)
class Certificates:
    pki: Pki
    server: KeyPair
    alice: KeyPair  # a client certificate the CA signed
    mallory: KeyPair  # a client certificate a foreign CA signed
    foreign_ca: Path

    def server_credentials(self, client_ca: bool = False) -> grpc.ServerCredentials:
        """TLS with the server's certificate; with `client_ca`, mTLS: a client certificate the CA signed required."""
        pair = (self.server.key.read_bytes(), self.server.cert.read_bytes())
        if not client_ca:
            return grpc.ssl_server_credentials([pair])
        ca = self.pki.ca_file.read_bytes()
        return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    pki = Pki.create(tmp_path_factory.mktemp("pki"))
    foreign = pki.foreign
    return Certificates(pki, pki.server(), pki.client("alice"), foreign.client("mallory"), foreign.ca_file)


def answered_by(client: RankClient) -> int:
    return client.rank(["ctr"], CANDIDATES, timeout=10)["ctr"].version


def rank_error(client: RankClient) -> RankError:
    with pytest.raises(RankError) as failed:
        client.rank(["ctr"], CANDIDATES, timeout=10)
    return failed.value


# ---- TLS and mTLS ------------------------------------------------------------------------------------------


def test_tls_with_the_right_root_ca_answers_and_reports_serving(certs):
    tls = ClientTls(root_ca=certs.pki.ca_file)
    with replica(1, certs.server_credentials()) as one, RankClient(one.target, tls=tls) as client:
        assert answered_by(client) == 1
        assert client.serving()


def test_a_root_ca_that_did_not_sign_the_server_certificate_is_unavailable(certs):
    tls = ClientTls(root_ca=certs.foreign_ca)
    with replica(1, certs.server_credentials()) as one, RankClient(one.target, tls=tls) as client:
        assert rank_error(client).code == grpc.StatusCode.UNAVAILABLE
        assert not client.serving()


def test_a_plaintext_client_of_a_tls_server_is_refused(certs):
    with replica(1, certs.server_credentials()) as one, RankClient(one.target) as client:
        assert rank_error(client).code == grpc.StatusCode.UNAVAILABLE


def test_server_name_overrides_the_name_the_certificate_is_checked_against(certs):
    """The certificate carries 127.0.0.1 and localhost: "localhost" passes on an IP target, another name fails."""
    with replica(1, certs.server_credentials()) as one:
        good = ClientTls(root_ca=certs.pki.ca_file, server_name="localhost")
        with RankClient(one.target, tls=good) as client:
            assert answered_by(client) == 1
        wrong = ClientTls(root_ca=certs.pki.ca_file, server_name="ranker.elsewhere.example")
        with RankClient(one.target, tls=wrong) as client:
            assert rank_error(client).code == grpc.StatusCode.UNAVAILABLE


def test_an_mtls_server_refuses_a_client_without_a_certificate_or_with_a_foreign_one(certs):
    ca = certs.pki.ca_file
    with replica(1, certs.server_credentials(client_ca=True)) as one:
        for tls in (ClientTls(root_ca=ca), ClientTls(root_ca=ca, cert=certs.mallory.cert, key=certs.mallory.key)):
            with RankClient(one.target, tls=tls) as client:
                assert rank_error(client).code == grpc.StatusCode.UNAVAILABLE, tls
        with RankClient(one.target, tls=ClientTls(root_ca=ca, cert=certs.alice.cert, key=certs.alice.key)) as client:
            assert answered_by(client) == 1


# ---- the settings and their files ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_file_others_can_read_is_refused_naming_the_file_and_its_mode(certs, tmp_path, mode):
    key = tmp_path / "alice.key"
    key.write_bytes(certs.alice.key.read_bytes())
    key.chmod(mode)
    tls = ClientTls(root_ca=certs.pki.ca_file, cert=certs.alice.cert, key=key)
    with pytest.raises(ClientTlsError) as refused:
        RankClient("127.0.0.1:1", tls=tls)
    assert str(refused.value).startswith(f"{key} is readable by others (mode {mode:04o}): chmod 600 it")


@pytest.mark.parametrize(("given", "missing"), [("cert", "key"), ("key", "cert")])
def test_cert_and_key_go_together(certs, given, missing):
    with pytest.raises(ValueError, match=f"cert and key go together .*: {given} is given without {missing}"):
        ClientTls(**{given: getattr(certs.alice, given)})


def test_a_file_that_is_missing_or_not_pem_is_refused_naming_it(certs, tmp_path):
    missing, garbage = tmp_path / "missing.pem", tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ClientTlsError, match=f"^{missing}: cannot read the TLS root CA"):
        RankClient("127.0.0.1:1", tls=ClientTls(root_ca=missing))
    with pytest.raises(ClientTlsError, match=f"^{garbage}: the TLS root CA is not PEM"):
        RankClient("127.0.0.1:1", tls=ClientTls(root_ca=garbage))
    # A certificate where the key should be (mode 0600, as a key's): PEM, but no private key in it.
    not_a_key = tmp_path / "not-a.key"
    not_a_key.write_bytes(certs.alice.cert.read_bytes())
    not_a_key.chmod(0o600)
    with pytest.raises(ClientTlsError, match=f"^{not_a_key}: the TLS key is not PEM"):
        ClientTls(cert=certs.alice.cert, key=not_a_key).read()


def test_target_lists_resolve_to_one_address_family():
    assert ChannelPlan.create(["127.0.0.1:1", "127.0.0.1:2"]).target == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert ChannelPlan.create(("[::1]:1", "[::1]:2")).target == "ipv6:[::1]:1,[::1]:2"
    plan = ChannelPlan.create(["localhost:3", "127.0.0.1:4"])  # a name is looked up once, here
    assert plan.target.startswith("ipv4:") and plan.target.endswith("127.0.0.1:4") and "127.0.0.1:3" in plan.target
    assert ("grpc.lb_policy_name", "round_robin") in plan.options
    assert ChannelPlan.create("ranker.invalid:8500").target == "ranker.invalid:8500"  # one target: gRPC resolves
    for bad, message in [
        ([], "empty"),
        (["127.0.0.1"], "expected HOST:PORT"),
        (["127.0.0.1:1", "[::1]:2"], "IPv4 for some and IPv6 for others"),
        (["ranker.invalid:8500"], "'ranker.invalid' cannot be resolved"),
    ]:
        with pytest.raises(ValueError, match=message):
            ChannelPlan.create(bad)


def test_a_tls_target_list_on_different_hosts_needs_a_server_name(certs):
    tls = ClientTls(root_ca=certs.pki.ca_file)
    with pytest.raises(ValueError, match=r"different hosts: with TLS give ClientTls\(server_name=\.\.\.\)"):
        ChannelPlan.create(["127.0.0.1:1", "127.0.0.2:1"], tls)
    named = ChannelPlan.create(["127.0.0.1:1", "127.0.0.2:1"], ClientTls(root_ca=certs.pki.ca_file, server_name="r"))
    assert ("grpc.ssl_target_name_override", "r") in named.options


# ---- target lists ------------------------------------------------------------------------------------------


@contextmanager
def three_replicas(credentials: Any) -> Iterator[list[Replica]]:
    with replica(1, credentials()) as one, replica(2, credentials()) as two, replica(3, credentials()) as three:
        yield [one, two, three]


def warm_up(call: Any, numbers: set[int]) -> None:
    """Calls until every replica in `numbers` has answered: all connected, so round_robin rotates over all."""
    seen: set[int] = set()
    for _ in range(WARM_UP_CALLS):
        seen.add(call())
        if seen == numbers:
            return
    raise AssertionError(f"only replicas {seen} of {numbers} answered in {WARM_UP_CALLS} calls")


@pytest.mark.parametrize("secure", [False, True], ids=["plaintext", "tls"])
def test_a_target_list_spreads_calls_over_every_replica_and_skips_one_gone_away(certs, secure):
    tls = ClientTls(root_ca=certs.pki.ca_file) if secure else None
    credentials = certs.server_credentials if secure else lambda: None
    with three_replicas(credentials) as replicas, RankClient([r.target for r in replicas], tls=tls) as client:
        warm_up(lambda: answered_by(client), {1, 2, 3})
        # Every replica READY: round_robin takes them in turn, so 30 calls are 10 each.
        assert Counter(answered_by(client) for _ in range(30)) == {1: 10, 2: 10, 3: 10}
        replicas[0].stop()
        # Every call succeeds: the stopped replica's connection is gone, and round_robin skips it.
        answers = Counter(answered_by(client) for _ in range(30))
        assert set(answers) == {2, 3} and sum(answers.values()) == 30


def test_a_tls_target_list_of_host_names_checks_the_certificates_against_the_name(certs):
    with replica(1, certs.server_credentials()) as one, replica(2, certs.server_credentials()) as two:
        targets = [one.target.replace("127.0.0.1", "localhost"), two.target.replace("127.0.0.1", "localhost")]
        with RankClient(targets, tls=ClientTls(root_ca=certs.pki.ca_file)) as client:
            warm_up(lambda: answered_by(client), {1, 2})


def test_the_async_client_over_tls_spreads_a_target_list_and_skips_one_gone_away(certs):
    async def spread(replicas: list[Replica]) -> None:
        async with AsyncRankClient([r.target for r in replicas], tls=ClientTls(root_ca=certs.pki.ca_file)) as client:

            async def call() -> int:
                return (await client.rank(["ctr"], CANDIDATES, timeout=10))["ctr"].version

            seen: set[int] = set()
            for _ in range(WARM_UP_CALLS):
                seen.add(await call())
                if seen == {1, 2, 3}:
                    break
            assert seen == {1, 2, 3}
            assert Counter([await call() for _ in range(30)]) == {1: 10, 2: 10, 3: 10}
            replicas[2].stop()
            answers = Counter([await call() for _ in range(30)])
            assert set(answers) == {1, 2} and sum(answers.values()) == 30

    with three_replicas(certs.server_credentials) as replicas:
        asyncio.run(spread(replicas))


def test_the_async_client_over_mtls_is_refused_without_a_certificate(certs):
    async def refused(target: str) -> grpc.StatusCode:
        async with AsyncRankClient(target, tls=ClientTls(root_ca=certs.pki.ca_file)) as client:
            with pytest.raises(RankError) as failed:
                await client.rank(["ctr"], CANDIDATES, timeout=10)
            return failed.value.code

    with replica(1, certs.server_credentials(client_ca=True)) as one:
        assert asyncio.run(refused(one.target)) == grpc.StatusCode.UNAVAILABLE


# ---- the admin commands' --tls-* options -----------------------------------------------------------------


def test_the_admin_commands_reach_a_tls_admin_port_with_the_tls_options(certs, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    ca, alice = str(certs.pki.ca_file), certs.alice
    with fake_admin_server(certs.server_credentials(client_ca=True)) as address:
        mtls = ["--tls-ca", ca, "--tls-cert", str(alice.cert), "--tls-key", str(alice.key)]
        result = CliRunner().invoke(main, ["models", "--server", address, *mtls])
        assert result.exit_code == 0 and "FAILED" in result.output, result.output
        # Without a client certificate the mTLS port refuses the connection: one line, exit 1.
        result = CliRunner().invoke(main, ["models", "--server", address, "--tls-ca", ca])
        assert result.exit_code == 1, result.output
        assert result.output.splitlines()[-1].startswith("Error: UNAVAILABLE"), result.output
