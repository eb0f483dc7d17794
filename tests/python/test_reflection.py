"""Server reflection, v1 and v1alpha, on both front ends: every service is listed and can be described (its
file and all it imports), Health included, as grpcurl needs; and the project's copies of gRPC's own protocols
(proto/grpc/) agree with the descriptors grpcio ships."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from served import FRONTENDS, REPO, ServerThread

SERVICES = {
    "adrank.v1.Ranking",
    "inference.GRPCInferenceService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}
VERSIONS = ["grpc.reflection.v1", "grpc.reflection.v1alpha"]


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request):
    running = ServerThread(frontend=request.param).start()
    yield running
    running.stop()


def ask(target: str, version: str, requests: list[reflection_pb2.ServerReflectionRequest]) -> list:
    """One stream of `version`'s reflection: v1's messages are v1alpha's byte for byte."""
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(
            f"/{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return list(call(iter(requests), timeout=10))


@pytest.mark.parametrize("version", VERSIONS)
def test_every_service_is_listed_and_describable_with_all_it_imports(server, version):
    (listed,) = ask(server.target, version, [reflection_pb2.ServerReflectionRequest(list_services="")])
    names = {s.name for s in listed.list_services_response.service}
    assert names == SERVICES
    answers = ask(
        server.target,
        version,
        [reflection_pb2.ServerReflectionRequest(file_containing_symbol=n) for n in sorted(names)],
    )
    for name, answer in zip(sorted(names), answers, strict=True):
        assert answer.original_request.file_containing_symbol == name
        assert answer.WhichOneof("message_response") == "file_descriptor_response", (name, answer)
        pool = descriptor_pool.DescriptorPool()
        for blob in answer.file_descriptor_response.file_descriptor_proto:  # dependencies come first
            pool.Add(descriptor_pb2.FileDescriptorProto.FromString(blob))
        service = pool.FindServiceByName(name)
        assert service.methods, name
    health = pool_of(server.target, version, "grpc.health.v1.Health").FindServiceByName("grpc.health.v1.Health")
    assert {"Check", "Watch"} <= {m.name for m in health.methods}


def pool_of(target: str, version: str, symbol: str) -> descriptor_pool.DescriptorPool:
    (answer,) = ask(target, version, [reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)])
    pool = descriptor_pool.DescriptorPool()
    for blob in answer.file_descriptor_response.file_descriptor_proto:
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(blob))
    return pool


@pytest.mark.parametrize("version", VERSIONS)
def test_an_unknown_symbol_is_not_found_and_the_stream_goes_on(server, version):
    unknown, known = ask(
        server.target,
        version,
        [
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Service"),
            reflection_pb2.ServerReflectionRequest(file_by_filename="adrank/v1/ranking.proto"),
        ],
    )
    assert unknown.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    if server.options.frontend == "cpp":  # grpcio-reflection's message is its own: "not found"
        assert "no.such.Service" in unknown.error_response.error_message
    assert known.file_descriptor_response.file_descriptor_proto


def compiled(proto: str) -> descriptor_pb2.FileDescriptorProto:
    out = Path(REPO / "build" / "reflection-test.pb")
    out.parent.mkdir(exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--descriptor_set_out={out}", proto],
        check=True,
        cwd=REPO,
    )
    (file,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return file


def shape(file: descriptor_pb2.FileDescriptorProto, package: str) -> dict:
    """Messages' fields and services' methods by name, with the package taken out of type names."""

    def local(name: str) -> str:
        return name.replace(f".{package}.", ".")

    out: dict = {}
    for message in file.message_type:
        out[message.name] = sorted((f.name, f.number, f.type, f.label, local(f.type_name)) for f in message.field)
    for service in file.service:
        for method in service.method:
            out[f"{service.name}.{method.name}"] = (
                local(method.input_type),
                local(method.output_type),
                method.client_streaming,
                method.server_streaming,
            )
    return out


def test_the_projects_copies_of_grpcs_protocols_agree_with_grpcio():
    ours = shape(compiled("proto/grpc/reflection/v1/reflection.proto"), "grpc.reflection.v1")
    theirs_file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(theirs_file)
    assert ours == shape(theirs_file, "grpc.reflection.v1alpha")
    ours = shape(compiled("proto/grpc/health/v1/health.proto"), "grpc.health.v1")
    health_pb2.DESCRIPTOR.CopyToProto(theirs_file := descriptor_pb2.FileDescriptorProto())
    theirs = shape(theirs_file, "grpc.health.v1")
    # grpcio's is newer than the grpc++ 1.51 that serves health here: it adds List, which is not served.
    assert ours == {k: v for k, v in theirs.items() if "List" not in k}
