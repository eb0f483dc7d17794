// adrank._core's Rank bindings: the contract that both front ends hand a call to (rank_call.h,
// rank_admission.h) and, when grpc++ was found at build time, the C++ front end (rank_server.h).
//
// The Python front end's call: `start_rank` takes the request's bytes with the GIL, releases it to parse,
// check, route and submit (rank_call.h StartRank), and returns a PendingRank at once. The answer is made
// on the worker that completes the call's last part, without the GIL: the response is serialized there,
// the answer kept, and the call's token pushed to the CompletionQueue that the event loop watches
// (completions.py); `wait` serves callers off the event loop (golden requests).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "bindings_common.h"
#include "completion_queue.h"
#include "infer_call.h"
#include "infer_metadata.h"
#include "infer_statistics.h"
#include "model_registry.h"
#include "rank_admission.h"
#include "rank_call.h"
#ifdef ADRANK_HAVE_FRONTEND
#include "rank_server.h"
#endif

namespace py = pybind11;

namespace adrank {
namespace {

// A started call (rank_call.h StartRank): the answer it will have, and the handle that may cancel it.
class PendingRank {
 public:
  PendingRank(std::shared_ptr<Outcome<RankAnswer>> answer, RankCallHandle call, uint64_t token)
      : answer_(std::move(answer)), call_(std::move(call)), token_(token) {}

  bool done() const { return answer_->done(); }

  // Blocks (without the GIL) until answered; False if `timeout_s` passed first.
  bool Wait(std::optional<double> timeout_s) const {
    const Timeout timeout = ParseTimeout(timeout_s);
    py::gil_scoped_release release;
    if (timeout.kind == Timeout::kNone) {
      answer_->Wait();
      return true;
    }
    return answer_->WaitFor(timeout.after);
  }

  // The serialized RankResponse; CoreError with the call's status if it failed.
  py::bytes Result() const {
    if (!answer_->done()) throw py::value_error("the Rank call has not answered yet");
    ThrowIfError(answer_->value().status);
    return py::bytes(answer_->value().reply);
  }

  void Cancel() const {
    py::gil_scoped_release release;
    call_.Cancel();
  }

  uint64_t token() const { return token_; }

 private:
  std::shared_ptr<Outcome<RankAnswer>> answer_;
  RankCallHandle call_;
  uint64_t token_;
};

using StartCall = RankCallHandle (*)(std::string_view, const ModelRegistry&, const RankCallOptions&,
                                     std::shared_ptr<Outcome<RankAnswer>>, std::function<void()>);

// One call of the contract, Rank's (StartRank) or KServe v2's ModelInfer (StartInfer).
template <StartCall start>
std::unique_ptr<PendingRank> Start(const std::shared_ptr<ModelRegistry>& registry, const py::bytes& request,
                                   std::optional<double> timeout_s, double reply_margin_s, std::string tenant,
                                   std::shared_ptr<CompletionQueue> completion_queue, uint64_t token) {
  RankCallOptions options;
  options.deadline = DeadlineOf(ParseTimeout(timeout_s));
  options.reply_margin = Seconds(reply_margin_s);
  options.tenant = std::move(tenant);
  char* data = nullptr;
  py::ssize_t size = 0;
  if (PyBytes_AsStringAndSize(request.ptr(), &data, &size) != 0) throw py::error_already_set();
  auto answer = std::make_shared<Outcome<RankAnswer>>();
  std::function<void()> answered;
  if (completion_queue) answered = [completion_queue, token] { completion_queue->Push(token); };
  RankCallHandle call;
  {
    // `request` is held by the caller for the duration: its bytes stay put while parsed.
    py::gil_scoped_release release;
    call = start(std::string_view(data, static_cast<size_t>(size)), *registry, options, answer, std::move(answered));
  }
  return std::make_unique<PendingRank>(std::move(answer), std::move(call), token);
}

// KServe v2's describing answers (infer_metadata.h), bytes in and out: the Python transports' (the grpc.aio
// front end, the HTTP endpoint) are then the C++ one's.
template <typename Message>
Message ParseMessage(const py::bytes& bytes) {
  Message message;
  if (!message.ParseFromString(std::string(bytes))) {
    ThrowIfError(InvalidArgument("request: not an " + Message::descriptor()->full_name()));
  }
  return message;
}

void BindInferMetadata(py::module_& m) {
  m.def(
      "infer_model_ready",
      [](const ModelRegistry& registry, bool serving, const py::bytes& request) {
        inference::ModelReadyResponse response;
        ModelReady(registry, serving, ParseMessage<inference::ModelReadyRequest>(request), &response);
        return py::bytes(response.SerializeAsString());
      },
      py::arg("registry"), py::arg("serving"), py::arg("request"));
  m.def(
      "infer_model_metadata",
      [](const ModelRegistry& registry, const py::bytes& request) {
        inference::ModelMetadataResponse response;
        ThrowIfError(ModelMetadata(registry, ParseMessage<inference::ModelMetadataRequest>(request), &response));
        return py::bytes(response.SerializeAsString());
      },
      py::arg("registry"), py::arg("request"));
  m.def(
      "infer_model_config",
      [](const ModelRegistry& registry, const py::bytes& request) {
        inference::ModelConfigResponse response;
        ThrowIfError(ModelConfig(registry, ParseMessage<inference::ModelConfigRequest>(request), &response));
        return py::bytes(response.SerializeAsString());
      },
      py::arg("registry"), py::arg("request"));
  m.def(
      "infer_model_statistics",
      [](const ModelRegistry& registry, const py::bytes& request) {
        inference::ModelStatisticsResponse response;
        ThrowIfError(ModelStatistics(registry, ParseMessage<inference::ModelStatisticsRequest>(request), &response));
        return py::bytes(response.SerializeAsString());
      },
      py::arg("registry"), py::arg("request"));
  m.def(
      "infer_server_metadata",
      [](const std::string& version) {
        InferServerInfo info;
        info.version = version;
        inference::ServerMetadataResponse response;
        ServerMetadata(info, &response);
        return py::bytes(response.SerializeAsString());
      },
      py::arg("version"));
}

void BindContract(py::module_& m) {
  py::class_<PendingRank>(m, "PendingRank")
      .def("done", &PendingRank::done)
      .def("wait", &PendingRank::Wait, py::arg("timeout_s") = py::none())
      .def("result", &PendingRank::Result)
      .def("cancel", &PendingRank::Cancel)
      .def_property_readonly("token", &PendingRank::token);
  m.def("start_rank", &Start<StartRank>, py::arg("registry"), py::arg("request"), py::kw_only(),
        py::arg("timeout_s") = py::none(), py::arg("reply_margin_s") = 0.0, py::arg("tenant") = "",
        py::arg("completion_queue") = nullptr, py::arg("token") = 0,
        "Starts one Rank call over the request's bytes (cpp/rank_call.h); its answer is the PendingRank's.");
  m.def("start_infer", &Start<StartInfer>, py::arg("registry"), py::arg("request"), py::kw_only(),
        py::arg("timeout_s") = py::none(), py::arg("reply_margin_s") = 0.0, py::arg("tenant") = "",
        py::arg("completion_queue") = nullptr, py::arg("token") = 0,
        "Starts one KServe v2 ModelInfer call over an inference.ModelInferRequest's bytes (cpp/infer_call.h); "
        "its answer (a serialized ModelInferResponse) is the PendingRank's.");
  BindInferMetadata(m);

  py::class_<RankAdmission, std::shared_ptr<RankAdmission>>(m, "RankAdmission")
      .def(py::init([](std::shared_ptr<ModelRegistry> registry, int64_t max_in_flight_bytes) {
             const RankAdmissionOptions options{max_in_flight_bytes};
             ThrowIfError(RankAdmission::Validate(options));
             return std::make_shared<RankAdmission>(std::move(registry), options);
           }),
           py::arg("registry"), py::arg("max_in_flight_bytes") = RankAdmissionOptions().max_in_flight_bytes)
      .def(
          "admit", [](RankAdmission& a, int64_t bytes) { ThrowIfError(a.Admit(bytes)); }, py::arg("bytes"))
      .def("call_done", &RankAdmission::CallDone)
      .def("release_bytes", &RankAdmission::ReleaseBytes, py::arg("bytes"))
      .def(
          "answered", [](RankAdmission& a, int code) { a.Answered(static_cast<StatusCode>(code)); }, py::arg("code"))
      .def("set_serving", [](RankAdmission& a) { a.SetState(RankAdmission::State::kServing); })
      .def("start_draining", [](RankAdmission& a) { a.SetState(RankAdmission::State::kDraining); })
      .def_property_readonly("state",
                             [](const RankAdmission& a) {
                               switch (a.state()) {
                                 case RankAdmission::State::kLoading:
                                   return "loading";
                                 case RankAdmission::State::kServing:
                                   return "serving";
                                 default:
                                   return "draining";
                               }
                             })
      .def(
          "wait_drained",
          [](RankAdmission& a, double quiet_s, double grace_s) {
            const Duration quiet = Seconds(quiet_s), grace = Seconds(grace_s);
            py::gil_scoped_release release;
            return a.WaitDrained(quiet, grace);
          },
          py::arg("quiet_s"), py::arg("grace_s"))
      .def_property_readonly("in_flight", &RankAdmission::in_flight)
      .def_property_readonly("in_flight_bytes", &RankAdmission::in_flight_bytes)
      .def_property_readonly("released_bytes", &RankAdmission::released_bytes)
      .def_property_readonly("max_in_flight_bytes", &RankAdmission::max_in_flight_bytes)
      .def("call_counts", [](const RankAdmission& a) { return CountsArray(a.CallCounts()); })
      .def("retried", &RankAdmission::Retried)
      .def_property_readonly("retried_calls", &RankAdmission::retried_calls);
}

#ifdef ADRANK_HAVE_FRONTEND
// Owns a RankServer; the registry is shared with the Python side. Everything that can block on calls
// in flight (whose batches may need the GIL to run a Python backend) releases the GIL.
class PyRankServer {
 public:
  PyRankServer(const RankServerOptions& options, std::shared_ptr<ModelRegistry> registry) {
    ThrowIfError(RankServer::Create(options, std::move(registry), &server_));
  }
  ~PyRankServer() {
    py::gil_scoped_release release;
    server_.reset();
  }

  void SetServing(bool serving) { server_->SetServing(serving); }
  void SetServiceServing(const std::string& service, bool serving) { server_->SetServiceServing(service, serving); }
  void StartDraining() { server_->StartDraining(); }
  void Shutdown(double grace_s) {
    const Duration grace = Seconds(grace_s);
    py::gil_scoped_release release;
    server_->Shutdown(grace);
  }
  int port() const { return server_->port(); }
  std::shared_ptr<RankAdmission> admission() const { return server_->admission(); }

  // `handler(method, request, authorization, done)` is called on a thread of the front end's queues with the GIL and
  // must return at once; `done(code, message, response)` answers the call later, from any thread.
  void SetRepositoryHandler(py::function handler) {
    auto shared = std::make_shared<py::function>(std::move(handler));
    server_->SetRepositoryHandler([shared](RepositoryCall call) {
      py::gil_scoped_acquire gil;
      auto done = call.done;
      py::cpp_function answer([done](int code, const std::string& message, const py::bytes& response) {
        const std::string bytes = response;
        py::gil_scoped_release release;
        done(Status(static_cast<StatusCode>(code), message), bytes);
      });
      try {
        (*shared)(call.method, py::bytes(call.request), call.authorization, answer);
      } catch (const py::error_already_set& error) {
        done(Internal(std::string("repository handler: ") + error.what()), "");
      }
    });
  }

 private:
  std::unique_ptr<RankServer> server_;
};

void BindRankServer(py::module_& m) {
  // Durations in seconds on the Python side, checked (Seconds) before they become the options'.
  py::class_<TlsFiles>(m, "TlsFiles")
      .def(py::init<>())
      .def_readwrite("cert_file", &TlsFiles::cert_file)
      .def_readwrite("key_file", &TlsFiles::key_file)
      .def_readwrite("client_ca_file", &TlsFiles::client_ca_file)
      .def_readwrite("refresh_s", &TlsFiles::refresh_s);

  py::class_<RankServerOptions>(m, "RankServerOptions")
      .def(py::init<>())
      .def_readwrite("host", &RankServerOptions::host)
      .def_readwrite("port", &RankServerOptions::port)
      .def_readwrite("max_message_bytes", &RankServerOptions::max_message_bytes)
      .def_readwrite("max_concurrent_streams", &RankServerOptions::max_concurrent_streams)
      .def_readwrite("grpc_threads", &RankServerOptions::grpc_threads)
      .def_readwrite("max_in_flight_bytes", &RankServerOptions::max_in_flight_bytes)
      .def_property(
          "keepalive_time_s", [](const RankServerOptions& o) { return ToSeconds(o.keepalive_time); },
          [](RankServerOptions& o, double s) { o.keepalive_time = Seconds(s); })
      .def_property(
          "keepalive_timeout_s", [](const RankServerOptions& o) { return ToSeconds(o.keepalive_timeout); },
          [](RankServerOptions& o, double s) { o.keepalive_timeout = Seconds(s); })
      .def_readwrite("yield_to_workers", &RankServerOptions::yield_to_workers)
      .def_property(
          "reply_margin_s", [](const RankServerOptions& o) { return ToSeconds(o.reply_margin); },
          [](RankServerOptions& o, double s) { o.reply_margin = Seconds(s); })
      .def_readwrite("version", &RankServerOptions::version)
      .def_readwrite("tls", &RankServerOptions::tls);

  py::class_<PyRankServer>(m, "RankServer")
      .def(py::init<const RankServerOptions&, std::shared_ptr<ModelRegistry>>(), py::arg("options"),
           py::arg("registry"))
      .def("set_serving", &PyRankServer::SetServing, py::arg("serving"))
      .def("set_service_serving", &PyRankServer::SetServiceServing, py::arg("service"), py::arg("serving"))
      .def("start_draining", &PyRankServer::StartDraining)
      .def("shutdown", &PyRankServer::Shutdown, py::arg("grace_s") = 0.0)
      .def_property_readonly("port", &PyRankServer::port)
      .def_property_readonly("admission", &PyRankServer::admission)
      .def("set_repository_handler", &PyRankServer::SetRepositoryHandler, py::arg("handler"));
}
#endif

}  // namespace

void BindRank(py::module_& m) {
  BindContract(m);
#ifdef ADRANK_HAVE_FRONTEND
  BindRankServer(m);
  m.attr("HAS_RANK_SERVER") = true;
#else
  m.attr("HAS_RANK_SERVER") = false;
#endif
}

}  // namespace adrank
