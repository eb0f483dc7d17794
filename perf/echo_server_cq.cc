// adrank_echo_cq: adrank_echo (perf/echo_server.cc) on grpc++'s async completion-queue API instead of the callback
// reactors, to measure what the CQ API would save adrank's front end per call (issue 35's lever "gRPC's async
// completion-queue API in place of the callback reactors"; perf/echo_cq_cost.py measures both).
//
// Usage: adrank_echo_cq [--cq-threads N] [--reply inline|worker|alarm] [--health] [PORT]   (0 or none: a free port).
// Prints `echo: SERVING on grpc 127.0.0.1:PORT` on stderr once it listens (adrank_echo's line); SIGTERM or SIGINT
// stops it (exit 0). Loopback only. Answers every method with an empty reply, the request read but not parsed.
//
// N server completion queues (builder.AddCompletionQueue, frequently polled), each drained by one thread of ours
// calling Next: with only async services registered, gRPC starts no sync-server pollers, so these threads are the
// server's pollers. Each call's steps (RequestCall, Read, WriteAndFinish) come back through the call's queue and are
// handled inline on its thread, which re-arms RequestCall as soon as a call arrives. --reply says who writes the
// reply once the request is read, as adrank's front end would have its core's worker do:
//   inline: the CQ thread (an echo: the floor of the API);
//   worker: the request goes to one worker thread (a mutex and condition variable queue, as a batch worker), which
//           calls WriteAndFinish itself (allowed from any thread: no other operation of that call is in flight);
//   alarm:  the worker sets an expired grpc::Alarm on the call's queue instead, and the CQ thread writes the reply.
// --health: gRPC's default health service beside it, as adrank's front end has (grpc::EnableDefaultHealthCheckService):
// a callback service, so that gRPC's callback machinery (its threads) is there too, idle unless health is asked.
#include <grpcpp/alarm.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <pthread.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "echo_worker.h"

namespace {

enum class Reply { kInline, kWorker, kAlarm };

class Call;
// The worker of `--reply worker` and `--reply alarm` (echo_worker.h): it completes each call off the CQ thread.
using Worker = EchoWorker<Call>;

// One call: its tag is itself, and `step` says which of its operations the queue just returned.
class Call {
 public:
  Call(grpc::AsyncGenericService* service, grpc::ServerCompletionQueue* cq, Reply reply, Worker* worker)
      : service_(service), cq_(cq), reply_mode_(reply), worker_(worker), stream_(&context_) {
    grpc::Slice empty("", 0);
    reply_ = grpc::ByteBuffer(&empty, 1);  // a default ByteBuffer holds no buffer, and writing it is refused
    service_->RequestCall(&context_, &stream_, cq_, cq_, this);
  }

  // Runs on the CQ thread for each event of this call's tag.
  void Proceed(bool ok);
  // Runs on the worker thread (reply modes worker and alarm).
  void Complete();

 private:
  enum class Step { kRequested, kRead, kAlarm, kFinished };
  void WriteReply() {
    step_ = Step::kFinished;
    stream_.WriteAndFinish(reply_, grpc::WriteOptions(), grpc::Status::OK, this);
  }

  grpc::AsyncGenericService* service_;
  grpc::ServerCompletionQueue* cq_;
  Reply reply_mode_;
  Worker* worker_;
  grpc::GenericServerContext context_;
  grpc::GenericServerAsyncReaderWriter stream_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer reply_;
  grpc::Alarm alarm_;
  Step step_ = Step::kRequested;
};

void Call::Proceed(bool ok) {
  switch (step_) {
    case Step::kRequested:
      if (!ok) {  // the server is shutting down: no call came
        delete this;
        return;
      }
      new Call(service_, cq_, reply_mode_, worker_);  // re-arm first, so that the next call finds a request waiting
      step_ = Step::kRead;
      stream_.Read(&request_, this);
      return;
    case Step::kRead:
      if (!ok) {
        step_ = Step::kFinished;
        stream_.Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request message"), this);
        return;
      }
      if (reply_mode_ == Reply::kInline) {
        WriteReply();
        return;
      }
      step_ = reply_mode_ == Reply::kAlarm ? Step::kAlarm : Step::kFinished;  // before the worker may touch it
      worker_->Submit(this);
      return;
    case Step::kAlarm:  // the worker's alarm fired: the reply is written here, on the CQ thread
      WriteReply();
      return;
    case Step::kFinished:  // the reply and status went out (or the call was cancelled)
      delete this;
      return;
  }
}

void Call::Complete() {
  if (reply_mode_ == Reply::kAlarm) {
    alarm_.Set(cq_, gpr_time_0(GPR_CLOCK_MONOTONIC), this);  // already expired: fires at once, on the CQ thread
  } else {
    stream_.WriteAndFinish(reply_, grpc::WriteOptions(), grpc::Status::OK, this);  // step_ is kFinished already
  }
}

void Drain(grpc::ServerCompletionQueue* cq, int index) {
  const std::string name = "echo-cq-" + std::to_string(index);
  pthread_setname_np(pthread_self(), name.c_str());
  void* tag = nullptr;
  bool ok = false;
  while (cq->Next(&tag, &ok)) static_cast<Call*>(tag)->Proceed(ok);
}

[[noreturn]] void Usage(const char* why) {
  std::fprintf(
      stderr,
      "adrank_echo_cq: %s\nusage: adrank_echo_cq [--cq-threads N] [--reply inline|worker|alarm] [--health] [PORT]\n",
      why);
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string port = "0";
  int cq_threads = 1;
  Reply reply = Reply::kInline;
  bool health = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--cq-threads" && i + 1 < argc) {
      cq_threads = std::atoi(argv[++i]);
      if (cq_threads < 1 || cq_threads > 64) Usage("--cq-threads takes 1 to 64");
    } else if (arg == "--reply" && i + 1 < argc) {
      const std::string mode = argv[++i];
      if (mode == "inline") {
        reply = Reply::kInline;
      } else if (mode == "worker") {
        reply = Reply::kWorker;
      } else if (mode == "alarm") {
        reply = Reply::kAlarm;
      } else {
        Usage("--reply takes inline, worker or alarm");
      }
    } else if (arg == "--health") {
      health = true;
    } else if (!arg.empty() && arg[0] != '-') {
      port = arg;
    } else {
      Usage(("unknown argument " + arg).c_str());
    }
  }
  // Blocked before gRPC starts its threads (they inherit the mask), so that only sigwait below takes them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  grpc::EnableDefaultHealthCheckService(health);
  grpc::AsyncGenericService service;
  grpc::ServerBuilder builder;
  int bound = 0;
  builder.AddListeningPort("127.0.0.1:" + port, grpc::InsecureServerCredentials(), &bound);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.RegisterAsyncGenericService(&service);
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
  for (int i = 0; i < cq_threads; ++i) queues.push_back(builder.AddCompletionQueue(/*is_frequently_polled=*/true));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || bound == 0) {
    std::fprintf(stderr, "echo: cannot listen on 127.0.0.1:%s\n", port.c_str());
    return 1;
  }
  auto worker = reply == Reply::kInline ? nullptr : std::make_unique<Worker>([](Call* call) { call->Complete(); });
  std::vector<std::thread> threads;
  for (int i = 0; i < cq_threads; ++i) {
    new Call(&service, queues[i].get(), reply, worker.get());  // owns itself: deleted on its last event
    threads.emplace_back(Drain, queues[i].get(), i);
  }
  std::fprintf(stderr, "echo: SERVING on grpc 127.0.0.1:%d\n", bound);
  std::fflush(stderr);
  int received = 0;
  sigwait(&stop_signals, &received);
  // The calls in flight finish (the worker and the CQ threads still run); the waiting RequestCalls come back !ok.
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  worker.reset();
  for (auto& queue : queues) queue->Shutdown();
  for (auto& thread : threads) thread.join();
  return 0;
}
