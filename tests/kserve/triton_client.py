"""Runs a plan of calls against adrank with Triton's own client (tritonclient 2.51.0), as an outside caller.

Runs in the client environment (`make kserve-env`: .venv-kserve), never in adrank's: tritonclient pins a
protobuf that adrank's stubs cannot use (tests/kserve/requirements.txt). The tests (tests/python/
test_kserve.py) write a plan, run this over it and check what it recorded.

Usage: triton_client.py PLAN.json RESULT.json
  PLAN: {"url": "127.0.0.1:PORT", "protocol": "grpc" | "http", "steps": [{"op": ..., ...}, ...]}
  ops: live | ready | server_metadata | model_ready {model, version} | model_metadata {model, version}
       | model_config {model, version} | statistics {model, version}  (both optional: every model, version)
       | repository_index {headers} | load_model {model, headers} | unload_model {model, headers}
       | infer {model, version, inputs: [{name, datatype, npy | strings}], outputs, parameters, priority,
                timeout_us, binary, out}  (`out`: where the outputs go, one .npz)
       | raw_infer {hex, model}  (bytes that are no request: to ModelInfer over gRPC, POSTed to infer over HTTP)
  RESULT: one entry per step: {"ok": true, "value": ...} or {"ok": false, "status": "...", "message": "..."}.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def make_input(module: Any, spec: dict, binary: bool) -> Any:
    if "strings" in spec:
        data = np.array([s.encode() for s in spec["strings"]], dtype=np.object_)
    else:
        data = np.load(spec["npy"])
    tensor = module.InferInput(spec["name"], list(spec.get("shape", data.shape)), spec["datatype"])
    if module is httpclient:
        tensor.set_data_from_numpy(data, binary_data=binary)
    else:
        tensor.set_data_from_numpy(data)
    return tensor


def infer(client: Any, module: Any, step: dict) -> dict:
    binary = step.get("binary", True)
    inputs = [make_input(module, spec, binary) for spec in step["inputs"]]
    outputs = None
    if step.get("outputs") is not None:
        if module is httpclient:
            outputs = [module.InferRequestedOutput(name, binary_data=binary) for name in step["outputs"]]
        else:
            outputs = [module.InferRequestedOutput(name) for name in step["outputs"]]
    kwargs: dict[str, Any] = {"model_version": step.get("version", ""), "request_id": step.get("id", "")}
    if step.get("parameters"):
        kwargs["parameters"] = step["parameters"]
    if step.get("priority") is not None:
        kwargs["priority"] = step["priority"]
    if step.get("timeout_us") is not None:
        kwargs["timeout"] = step["timeout_us"]
    result = client.infer(step["model"], inputs, outputs=outputs, **kwargs)
    response = result.get_response(as_json=True) if module is grpcclient else result.get_response()
    names = [output["name"] for output in response["outputs"]]
    np.savez(step["out"], **{name: result.as_numpy(name) for name in names})
    return {
        "model_name": response["model_name"],
        "model_version": response["model_version"],
        "id": response.get("id", ""),
        "outputs": [{k: output[k] for k in ("name", "datatype", "shape")} for output in response["outputs"]],
    }


def raw_infer(url: str, protocol: str, model: str, payload: bytes) -> None:
    """Bytes that are no request of the protocol, sent as they are (tritonclient only sends good ones)."""
    if protocol == "grpc":
        with grpc.insecure_channel(url) as channel:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(payload, timeout=10)
        return
    post = urllib.request.Request(f"http://{url}/v2/models/{model}/infer", data=payload, method="POST")
    try:
        urllib.request.urlopen(post, timeout=10).close()
    except urllib.error.HTTPError as error:
        raise InferenceServerException(json.loads(error.read())["error"], status=str(error.code)) from None


def kwargs_json(module: Any) -> dict[str, bool]:
    """The gRPC client answers protobuf messages unless asked for JSON; the HTTP one answers JSON."""
    return {"as_json": True} if module is grpcclient else {}


def run(client: Any, module: Any, url: str, protocol: str, step: dict) -> Any:
    op = step["op"]
    if op == "live":
        return client.is_server_live()
    if op == "ready":
        return client.is_server_ready()
    if op == "model_ready":
        return client.is_model_ready(step["model"], step.get("version", ""))
    if op == "server_metadata":
        return client.get_server_metadata(**kwargs_json(module))
    if op == "model_metadata":
        return client.get_model_metadata(step["model"], step.get("version", ""), **kwargs_json(module))
    if op == "model_config":
        config = client.get_model_config(step["model"], step.get("version", ""), **kwargs_json(module))
        return config["config"] if module is grpcclient else config
    if op == "statistics":  # Triton's statistics extension: {"model_stats": [...]} from either client
        return client.get_inference_statistics(step.get("model", ""), step.get("version", ""), **kwargs_json(module))
    headers = step.get("headers")
    if op == "repository_index":  # the models: gRPC's JSON wraps them, HTTP's is the list
        index = client.get_model_repository_index(headers=headers, **kwargs_json(module))
        return index.get("models", []) if module is grpcclient else index
    if op == "load_model":
        return client.load_model(step["model"], headers=headers)
    if op == "unload_model":
        return client.unload_model(step["model"], headers=headers)
    if op == "infer":
        return infer(client, module, step)
    if op == "raw_infer":
        return raw_infer(url, protocol, step.get("model", "ctr"), bytes.fromhex(step["hex"]))
    raise ValueError(f"unknown op {op!r}")


def main(plan_path: str, result_path: str) -> int:
    with open(plan_path) as f:
        plan = json.load(f)
    module = grpcclient if plan["protocol"] == "grpc" else httpclient
    client = module.InferenceServerClient(url=plan["url"])
    results = []
    for step in plan["steps"]:
        try:
            results.append({"ok": True, "value": run(client, module, plan["url"], plan["protocol"], step)})
        except InferenceServerException as error:
            results.append({"ok": False, "status": str(error.status()), "message": error.message()})
        except grpc.RpcError as error:
            results.append({"ok": False, "status": str(error.code()), "message": error.details()})
    with open(result_path, "w") as f:
        json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
