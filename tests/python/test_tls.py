"""TLS on every port (server/tls.py, cpp/frontend/tls_credentials.h), with a throwaway CA made at test time
(certs.py): the gRPC port serves TLS only on both front ends, mutual TLS refuses a client without a certificate
or with one a foreign CA signed, a replaced certificate serves new connections without a restart while a bad
replacement is refused and the old one kept, the admin API over TLS still needs its token, and the HTTP port
serves HTTPS. Only loopback; every wait is bounded.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from certs import KeyPair, Pki
from click.testing import CliRunner
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client.parser import text_string_to_metric_families

from adrank.admin_token import TOKEN_ENV
from adrank.cli import main
from adrank.client import RankClient, build_request, parse_response
from adrank.client_tls import ClientTls
from adrank.kserve import grpc_service_pb2 as kserve
from adrank.kserve import grpc_service_pb2_grpc as kserve_grpc
from adrank.server.tls import CertificateWatcher, TlsFiles, load_material
from adrank.v1 import admin_pb2, admin_pb2_grpc, ranking_pb2, ranking_pb2_grpc
from served import FRONTENDS, MODELS, ServerThread

TOKEN = "tls-test-token"
# Rotation shows within the watchers' second (TlsFiles.refresh_s = 1) and gRPC's file watcher's second after it.
ROTATION_DEADLINE_S = 15.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


def ctr_only(tmp_path: Path) -> Path:
    """ctr alone: these tests are about the transport, and one small model loads fastest."""
    repository = tmp_path / "repo"
    shutil.copytree(MODELS / "ctr", repository / "ctr", ignore=shutil.ignore_patterns("*.py", "README.md"))
    return repository


def served_files(pki: Pki, folder: Path, name: str = "server") -> tuple[KeyPair, Path, Path]:
    """A server certificate copied to files the test may replace later (the operator's files)."""
    issued = pki.server(name)
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "tls.crt", folder / "tls.key"
    shutil.copy(issued.cert, cert)
    shutil.copy(issued.key, key)
    return issued, cert, key


def channel(target: str, pki: Pki, client: KeyPair | None = None) -> grpc.Channel:
    key = client.key.read_bytes() if client else None
    chain = client.cert.read_bytes() if client else None
    credentials = grpc.ssl_channel_credentials(pki.ca_file.read_bytes(), key, chain)
    return grpc.secure_channel(target, credentials)


def rank(chan: grpc.Channel) -> int:
    """One Rank call of ctr; the version that answered."""
    request = build_request(
        ["ctr"], {"dense": np.zeros((2, 13), np.float32), "sparse": np.zeros((2, 26), np.int64)}, None
    )
    response: ranking_pb2.RankResponse = ranking_pb2_grpc.RankingStub(chan).Rank(request, timeout=20)
    return parse_response(response)["ctr"].version


def health(chan: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=10).status


def kserve_ready(chan: grpc.Channel) -> bool:
    """KServe v2's ModelReady of ctr, on the same port as Rank."""
    stub = kserve_grpc.GRPCInferenceServiceStub(chan)
    return stub.ModelReady(kserve.ModelReadyRequest(name="ctr"), timeout=10).ready


def reflected(chan: grpc.Channel) -> set[str]:
    """The services server reflection lists."""
    call = chan.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (answer,) = call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    return {service.name for service in answer.list_services_response.service}


def refused(chan: grpc.Channel, call: Callable[[grpc.Channel], object] = health) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        call(chan)
    return error.value.code()


def peer_certificate(port: int, client: KeyPair | None = None) -> x509.Certificate:
    """The certificate a new TLS connection to the port is shown (the handshake alone, no call); `client`: the
    certificate it presents, for a mutual TLS port."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def serial_of(pair: KeyPair) -> int:
    return x509.load_pem_x509_certificate(pair.cert.read_bytes()).serial_number


def list_models(chan: grpc.Channel) -> list[str]:
    """The admin API's ListModels, with the token."""
    stub = admin_pb2_grpc.AdminStub(chan)
    listed = stub.ListModels(admin_pb2.ListModelsRequest(), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=10)
    return [m.name for m in listed.models]


def metric_samples(url: str, context: ssl.SSLContext | None = None) -> dict[tuple[str, tuple], float]:
    """/metrics' samples by name and sorted labels."""
    with urllib.request.urlopen(url, context=context, timeout=10) as page:
        text = page.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture(params=FRONTENDS)
def frontend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def tls_log(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "adrank.tls" and r.levelno == level]


def test_the_grpc_port_serves_tls_only_and_rotates_without_a_restart(
    pki: Pki, frontend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="adrank.tls")
    first, cert, key = served_files(pki, tmp_path / "operator")
    server = ServerThread(ctr_only(tmp_path), frontend=frontend, tls=TlsFiles(cert, key)).start()
    try:
        port = server.server.grpc_port
        with channel(server.target, pki) as secure:  # every service of the port: Rank, KServe v2, health, reflection
            assert health(secure) == health_pb2.HealthCheckResponse.SERVING and rank(secure) == 1
            assert kserve_ready(secure)
            assert {"adrank.v1.Ranking", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= reflected(secure)
        with grpc.insecure_channel(server.target) as plain:
            for call in (health, rank, kserve_ready, reflected):
                assert refused(plain, call) == grpc.StatusCode.UNAVAILABLE, call.__name__
        assert peer_certificate(port).serial_number == serial_of(first)

        second = pki.server("rotated")  # the operator replaces the files: key first, then the certificate
        shutil.copy(second.key, key)
        shutil.copy(second.cert, cert)
        deadline = time.monotonic() + ROTATION_DEADLINE_S
        while peer_certificate(port).serial_number != serial_of(second):
            assert time.monotonic() < deadline, "the rotated certificate never served"
            time.sleep(0.2)
        with channel(server.target, pki) as secure:  # a new connection, on the new certificate
            assert rank(secure) == 1
        watcher = server.server.tls.grpc
        assert watcher is not None and watcher.reloads["ok"] == 1
        expires = x509.load_pem_x509_certificate(second.cert.read_bytes()).not_valid_after_utc.isoformat(
            timespec="seconds"
        )
        assert (
            tls_log(caplog, logging.INFO)[-1] == f"tls: grpc port: certificate reloaded: CN=rotated, expires {expires}"
        )

        # A bad replacement: a certificate whose key is not there (the key file keeps the old key).
        third = pki.server("mismatched")
        shutil.copy(third.cert, cert)
        deadline = time.monotonic() + ROTATION_DEADLINE_S
        while watcher.reloads["refused"] == 0:
            assert time.monotonic() < deadline, "the bad replacement was never looked at"
            time.sleep(0.1)
        time.sleep(2.5)  # two more looks of both watchers: nothing changes
        assert peer_certificate(port).serial_number == serial_of(second)
        assert watcher.current.subject == "CN=rotated"
        (said,) = tls_log(caplog, logging.ERROR)  # once, however many looks find the same bad files
        assert said == (
            f"tls: grpc port: keeping CN=rotated, expires {expires}: the new files are refused:"
            f" key {key} does not match certificate {cert}"
        )
        with channel(server.target, pki) as secure:
            assert rank(secure) == 1
        samples = metric_samples(f"http://127.0.0.1:{server.server.http_port}/metrics")
        reloads = "adrank_tls_reloads_total"
        assert samples[(reloads, (("port", "grpc"), ("result", "ok")))] == 1
        assert samples[(reloads, (("port", "grpc"), ("result", "refused")))] == 1
        expiry = x509.load_pem_x509_certificate(second.cert.read_bytes()).not_valid_after_utc.timestamp()
        assert samples[("adrank_tls_certificate_expiry_timestamp_seconds", (("port", "grpc"),))] == expiry
    finally:
        server.stop()


def test_the_published_key_and_certificate_match_at_every_step_of_a_rotation(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The C++ front end's gRPC file watcher and the HTTPS contexts read the watcher's published files at any
    moment: after each rename that publishes a rotation, the files published() names hold a key and the
    certificate it matches (with a key and a certificate renamed one after the other, a reader between the two
    renames would find the new key beside the old certificate, and a rotation could break new handshakes)."""
    _, cert, key = served_files(pki, tmp_path / "operator")
    watcher = CertificateWatcher("grpc", TlsFiles(cert, key))
    try:
        published = watcher.published()
        shown = TlsFiles(Path(published.cert_file), Path(published.key_file))
        second = pki.server("rotated")
        shutil.copy(second.key, key)
        shutil.copy(second.cert, cert)
        renamed = os.replace
        seen: list[str] = []

        def rename_and_read(source: str, target: Path) -> None:
            renamed(source, target)
            seen.append(load_material(shown).subject)  # TlsError when the key is not the certificate's

        monkeypatch.setattr(os, "replace", rename_and_read)
        watcher.poll()
        assert watcher.current.subject == "CN=rotated" and seen and seen[-1] == "CN=rotated", seen
    finally:
        watcher.stop()


def test_mutual_tls_refuses_clients_without_a_certificate_from_its_ca(pki: Pki, frontend: str, tmp_path: Path):
    _, cert, key = served_files(pki, tmp_path / "operator")
    server = ServerThread(ctr_only(tmp_path), frontend=frontend, tls=TlsFiles(cert, key, pki.ca_file)).start()
    try:
        with channel(server.target, pki, pki.client("alice")) as trusted:
            assert rank(trusted) == 1
        bob = pki.client("bob")  # adrank's own client, its TLS settings from files
        with RankClient(server.target, tls=ClientTls(root_ca=pki.ca_file, cert=bob.cert, key=bob.key)) as client:
            scores = client.rank(["ctr"], {"dense": np.ones((3, 13), np.float32), "sparse": np.ones((3, 26), np.int64)})
            assert scores["ctr"].scores.shape == (3,)
        with channel(server.target, pki) as anonymous:
            assert refused(anonymous) == grpc.StatusCode.UNAVAILABLE
        with channel(server.target, pki, pki.foreign.client("mallory")) as stranger:
            assert refused(stranger) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_the_admin_port_over_tls_still_needs_the_token_and_https_serves_the_http_port(pki: Pki, tmp_path: Path):
    """Without --admin-tls-*, the admin port serves the gRPC port's credentials: its certificate, and its mutual
    TLS (--tls-client-ca) too."""
    first, cert, key = served_files(pki, tmp_path / "operator")
    web = pki.server("web")
    server = ServerThread(
        ctr_only(tmp_path),
        admin_port=0,
        admin_token=TOKEN,
        tls=TlsFiles(cert, key, pki.ca_file),
        http_tls=TlsFiles(web.cert, web.key),
    ).start()
    try:
        admin_target, carol = f"127.0.0.1:{server.server.admin.port}", pki.client("carol")
        assert peer_certificate(server.server.admin.port, carol).serial_number == serial_of(first)
        with channel(admin_target, pki) as anonymous:
            assert refused(anonymous, list_models) == grpc.StatusCode.UNAVAILABLE
        with channel(admin_target, pki, carol) as secure:
            stub = admin_pb2_grpc.AdminStub(secure)
            with pytest.raises(grpc.RpcError) as unauthenticated:
                stub.ListModels(admin_pb2.ListModelsRequest(), timeout=10)
            assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
            listed = stub.ListModels(
                admin_pb2.ListModelsRequest(), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=10
            )
            assert [m.name for m in listed.models] == ["ctr"]
        listed_by_cli = CliRunner(env={TOKEN_ENV: TOKEN}).invoke(
            main,
            [
                *("models", "--server", admin_target, "--json", "--tls-ca", str(pki.ca_file)),
                *("--tls-cert", str(carol.cert), "--tls-key", str(carol.key)),
            ],
        )
        assert listed_by_cli.exit_code == 0, listed_by_cli.output
        assert [m["model"] for m in json.loads(listed_by_cli.stdout)] == ["ctr"]
        with grpc.insecure_channel(admin_target) as plain:
            with pytest.raises(grpc.RpcError) as refused_plain:
                admin_pb2_grpc.AdminStub(plain).ListModels(admin_pb2.ListModelsRequest(), timeout=10)
            assert refused_plain.value.code() == grpc.StatusCode.UNAVAILABLE

        http = server.server.http_port
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        with urllib.request.urlopen(f"https://127.0.0.1:{http}/readyz", context=context, timeout=10) as reply:
            assert reply.status == 200 and reply.read() == b"ready\n"
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=10).read()
        assert peer_certificate(http).subject.rfc4514_string() == "CN=web"
    finally:
        server.stop()


def serve_command(*arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from adrank.cli import main; main()", "serve", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_serve_refuses_a_certificate_without_its_key_and_files_it_cannot_serve(pki: Pki, tmp_path: Path):
    issued = pki.server("cli")
    repository = ctr_only(tmp_path)
    alone = serve_command("--repository", str(repository), "--tls-cert", str(issued.cert))
    assert alone.returncode == 2 and alone.stderr.strip().splitlines()[-1] == "Error: --tls-cert needs --tls-key"
    ca_alone = serve_command("--repository", str(repository), "--http-tls-cert", str(issued.cert))
    assert ca_alone.returncode == 2 and "--http-tls-cert needs --http-tls-key" in ca_alone.stderr

    other = pki.server("other")  # a key that is not the certificate's
    arguments = ["--repository", str(repository), "--grpc-port", "0", "--http-port", "0"]
    mismatched = serve_command(*arguments, "--tls-cert", str(issued.cert), "--tls-key", str(other.key))
    lines = mismatched.stderr.strip().splitlines()
    assert mismatched.returncode == 1 and "Traceback" not in mismatched.stderr
    assert lines[-1] == f"Error: key {other.key} does not match certificate {issued.cert}"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    broken = serve_command(*arguments, "--tls-cert", str(garbage), "--tls-key", str(issued.key))
    assert broken.returncode == 1 and broken.stderr.strip().splitlines()[-1].startswith(
        f"Error: certificate {garbage}: not a PEM certificate"
    )
    assert "Traceback" not in broken.stderr


SERVING_PORTS = re.compile(
    r"SERVING .* on grpc 127\.0\.0\.1:(\d+), http 127\.0\.0\.1:(\d+) .*admin 127\.0\.0\.1:(\d+)\)"
)


def test_serve_gives_the_admin_and_http_ports_certificates_of_their_own_and_rotates_each(pki: Pki, tmp_path: Path):
    """`adrank serve` with every TLS option: --admin-tls-* give the admin port its own certificate and mutual
    TLS while the gRPC port stays one-way, --http-tls-* serve HTTPS; replacing the admin port's and the HTTP
    port's files rotates each without a restart (its log line, its expiry in /metrics), the gRPC port's
    certificate untouched."""
    grpc_first, cert, key = served_files(pki, tmp_path / "grpc")
    admin_first, admin_cert, admin_key = served_files(pki, tmp_path / "admin", "admin")
    web_first, web_cert, web_key = served_files(pki, tmp_path / "web", "web")
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    arguments = [
        *("--repository", str(ctr_only(tmp_path)), "--grpc-port", "0", "--http-port", "0", "--admin-port", "0"),
        *("--workers", "1", "--admin-token-file", str(token), "--tls-cert", str(cert), "--tls-key", str(key)),
        *("--admin-tls-cert", str(admin_cert), "--admin-tls-key", str(admin_key)),
        *("--admin-tls-client-ca", str(pki.ca_file), "--http-tls-cert", str(web_cert), "--http-tls-key", str(web_key)),
    ]
    command = [sys.executable, "-c", "from adrank.cli import main; main()", "serve", *arguments]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        match = None
        while match is None:
            line = proc.stderr.readline()
            assert line, f"adrank serve exited ({proc.wait()}) before SERVING:\n{''.join(lines)}"
            lines.append(line)
            match = SERVING_PORTS.search(line)
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
        reader.start()
        grpc_port, http_port, admin_port = (int(port) for port in match.groups())
        admin_target, alice = f"127.0.0.1:{admin_port}", pki.client("alice")

        assert peer_certificate(grpc_port).serial_number == serial_of(grpc_first)
        assert peer_certificate(admin_port, alice).serial_number == serial_of(admin_first)
        assert peer_certificate(http_port).serial_number == serial_of(web_first)
        with channel(f"127.0.0.1:{grpc_port}", pki) as one_way:  # --tls-client-ca not given: no client certificate
            assert rank(one_way) == 1
        with channel(admin_target, pki) as anonymous:  # --admin-tls-client-ca: the admin port is mutual
            assert refused(anonymous, list_models) == grpc.StatusCode.UNAVAILABLE
        with channel(admin_target, pki, pki.foreign.client("mallory")) as stranger:
            assert refused(stranger, list_models) == grpc.StatusCode.UNAVAILABLE
        with channel(admin_target, pki, alice) as trusted:
            assert list_models(trusted) == ["ctr"]

        admin_second, web_second = pki.server("admin-rotated"), pki.server("http-rotated")
        for issued, (to_cert, to_key) in ((admin_second, (admin_cert, admin_key)), (web_second, (web_cert, web_key))):
            shutil.copy(issued.key, to_key)  # key first, then the certificate, as an operator's tools do
            shutil.copy(issued.cert, to_cert)
        deadline = time.monotonic() + ROTATION_DEADLINE_S
        while (peer_certificate(admin_port, alice).serial_number, peer_certificate(http_port).serial_number) != (
            serial_of(admin_second),
            serial_of(web_second),
        ):
            assert time.monotonic() < deadline, "a rotated certificate never served"
            time.sleep(0.2)
        with channel(admin_target, pki, alice) as trusted:  # a new connection, on the new certificate
            assert list_models(trusted) == ["ctr"]
        assert peer_certificate(grpc_port).serial_number == serial_of(grpc_first)

        https = ssl.create_default_context(cafile=str(pki.ca_file))
        samples = metric_samples(f"https://127.0.0.1:{http_port}/metrics", https)
        for port, issued in (("grpc", grpc_first), ("admin", admin_second), ("http", web_second)):
            expiry = x509.load_pem_x509_certificate(issued.cert.read_bytes()).not_valid_after_utc.timestamp()
            assert samples[("adrank_tls_certificate_expiry_timestamp_seconds", (("port", port),))] == expiry, port
        for port, reloads in (("grpc", 0), ("admin", 1), ("http", 1)):
            assert samples[("adrank_tls_reloads_total", (("port", port), ("result", "ok")))] == reloads, port
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    reader.join(timeout=10)
    for port, issued in (("admin", admin_second), ("http", web_second)):
        expires = x509.load_pem_x509_certificate(issued.cert.read_bytes()).not_valid_after_utc.isoformat("T", "seconds")
        said = f"tls: {port} port: certificate reloaded: CN={port}-rotated, expires {expires}"
        assert any(line.rstrip().endswith(said) for line in lines), f"no line ends with {said!r}"
