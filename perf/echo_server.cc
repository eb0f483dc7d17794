// adrank_echo: a grpc++ server that answers every unary call with an empty reply, running nothing. The bench
// measures it at adrank's 10 % point with the C++ sender: the latency floor that gRPC, loopback and waking idle
// cores put under any C++ server on this machine, so that adrank's own share of its latency can be read off.
//
// Usage: adrank_echo [PORT]   (0 or none: a free port). Prints `echo: SERVING on grpc 127.0.0.1:PORT` on stderr
// once it listens; SIGTERM or SIGINT stops it (exit 0). Loopback only.
//
// Same gRPC build and the same callback API (reactors on gRPC's threads) as adrank's front end; the request is
// read (so the bytes cross the transport) but not parsed.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <memory>
#include <string>

namespace {

class EchoCall final : public grpc::ServerGenericBidiReactor {
 public:
  EchoCall() {
    grpc::Slice empty("", 0);
    reply_ = grpc::ByteBuffer(&empty, 1);  // a default ByteBuffer holds no buffer, and writing it is refused
    StartRead(&request_);
  }
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request message"));
      return;
    }
    StartWriteAndFinish(&reply_, grpc::WriteOptions(), grpc::Status::OK);
  }
  void OnDone() override { delete this; }  // gRPC's reactor idiom: the call owns itself until it is done

 private:
  grpc::ByteBuffer request_;
  grpc::ByteBuffer reply_;
};

class EchoService final : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* /*context*/) override {
    return new EchoCall;  // deletes itself in OnDone
  }
};

}  // namespace

int main(int argc, char** argv) {
  const std::string port = argc > 1 ? argv[1] : "0";
  // Blocked before gRPC starts its threads (they inherit the mask), so that only sigwait below takes them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  EchoService service;
  grpc::ServerBuilder builder;
  int bound = 0;
  builder.AddListeningPort("127.0.0.1:" + port, grpc::InsecureServerCredentials(), &bound);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.RegisterCallbackGenericService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || bound == 0) {
    std::fprintf(stderr, "echo: cannot listen on 127.0.0.1:%s\n", port.c_str());
    return 1;
  }
  std::fprintf(stderr, "echo: SERVING on grpc 127.0.0.1:%d\n", bound);
  std::fflush(stderr);
  int received = 0;
  sigwait(&stop_signals, &received);
  server->Shutdown();
  return 0;
}
