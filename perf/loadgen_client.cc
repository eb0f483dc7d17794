// adrank_loadgen: the load generator's sending half in C++ (perf/loadgen.py plans the run and reads the record).
//
// Why: a grpc.aio client costs a few hundred microseconds of CPU per call and adds them to every latency it
// measures (its event loop wakes, runs Python, serializes the call's metadata). A grpc++ client on a completion
// queue costs tens of microseconds, so the latency recorded is the server's and the transport's, not the
// generator's, and one core offers several thousand calls per second.
//
// Usage: adrank_loadgen TARGET METHOD PLAN RECORD [CONNECTIONS]
//   CONNECTIONS (default 1): calls go round-robin over this many HTTP/2 connections, as a client's channel pool
//     spreads them; a server reads each connection in turn, so one connection can hold back what it is sent.
//   PLAN (written by loadgen.py, little-endian):
//     int64 n_payloads, count, concurrency (0: open loop), timeout_us, duration_us, n_metadata
//     n_metadata times: int64 key_size, value_size; key, value bytes   gRPC metadata sent with every call
//     float64 schedule[count]      open loop: seconds after the start at which call i is sent
//     int64 order[count]           call i sends payload order[i]
//     int64 offsets[n_payloads+1]  payload j is blob[offsets[j], offsets[j+1])
//     uint8 blob[]
//   RECORD (written here): float64 sent[count], latency[count], lag[count], code[count], each relative to the
//     start in seconds; NaN (code: -1) for calls never sent. stdout: {"cpu_s":..,"wall_s":..,"done_at_s":..,
//     "start_s":..}, start_s being the start on CLOCK_MONOTONIC (steady_clock, as Python's perf_counter), so that
//     the records of senders running side by side can be put on one time line.
//
// Open loop: one thread sends call i at its scheduled time whatever is in flight (sleeping until then); another
// reaps completions. Closed loop: `concurrency` calls in flight, each completion sends the next. Either way the
// run stops sending after `duration_us` or `count` calls, and each call has a deadline of `timeout_us`.
// Payloads become grpc::ByteBuffers before the clock starts; replies are not parsed, only the status kept.
#include <absl/synchronization/mutex.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Plan {
  int64_t count = 0;
  int64_t concurrency = 0;
  std::chrono::microseconds timeout{0};
  std::chrono::microseconds duration{0};
  // Sent with every call (e.g. the tenant header): per plan, because one sender is one client.
  std::vector<std::pair<std::string, std::string>> metadata;
  std::vector<double> schedule;
  std::vector<int64_t> order;
  std::vector<grpc::ByteBuffer> payloads;
};

struct Record {
  explicit Record(int64_t count)
      : sent(count, std::nan("")), latency(count, std::nan("")), lag(count, std::nan("")), code(count, -1) {}
  std::vector<double> sent, latency, lag, code;
};

// One call in flight. ClientContext cannot be reused, so each slot gets its own, made before the clock starts.
struct Call {
  grpc::ClientContext context;
  grpc::ByteBuffer reply;
  grpc::Status status;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
  Clock::time_point sent_at;
  int64_t slot = 0;
};

template <typename T>
std::vector<T> ReadArray(std::ifstream& in, int64_t n) {
  std::vector<T> values(static_cast<size_t>(n));
  in.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(n * sizeof(T)));
  if (!in) throw std::runtime_error("plan file is truncated");
  return values;
}

Plan ReadPlan(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open plan " + path);
  const std::vector<int64_t> header = ReadArray<int64_t>(in, 6);
  Plan plan;
  const int64_t n_payloads = header[0];
  plan.count = header[1];
  plan.concurrency = header[2];
  plan.timeout = std::chrono::microseconds(header[3]);
  plan.duration = std::chrono::microseconds(header[4]);
  if (n_payloads <= 0 || plan.count <= 0 || plan.concurrency < 0 || header[5] < 0) {
    throw std::runtime_error("bad plan header");
  }
  for (int64_t i = 0; i < header[5]; ++i) {
    const std::vector<int64_t> sizes = ReadArray<int64_t>(in, 2);
    if (sizes[0] <= 0 || sizes[1] < 0) throw std::runtime_error("bad plan metadata");
    const std::vector<char> key = ReadArray<char>(in, sizes[0]);
    const std::vector<char> value = ReadArray<char>(in, sizes[1]);
    plan.metadata.emplace_back(std::string(key.begin(), key.end()), std::string(value.begin(), value.end()));
  }
  plan.schedule = ReadArray<double>(in, plan.count);
  plan.order = ReadArray<int64_t>(in, plan.count);
  const std::vector<int64_t> offsets = ReadArray<int64_t>(in, n_payloads + 1);
  const std::string blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (static_cast<int64_t>(blob.size()) != offsets.back()) throw std::runtime_error("plan blob size mismatch");
  for (int64_t j = 0; j < n_payloads; ++j) {
    grpc::Slice slice(blob.data() + offsets[j], static_cast<size_t>(offsets[j + 1] - offsets[j]));
    plan.payloads.emplace_back(&slice, 1);
  }
  for (int64_t index : plan.order) {
    if (index < 0 || index >= n_payloads) throw std::runtime_error("plan order out of range");
  }
  return plan;
}

class Generator {
 public:
  Generator(const std::string& target, std::string method, Plan plan, int connections)
      : method_(std::move(method)), plan_(std::move(plan)), record_(plan_.count) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
    // Each channel its own connection: channels with equal arguments would share one subchannel.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    for (int i = 0; i < connections; ++i) {
      channels_.push_back(grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
      stubs_.push_back(std::make_unique<grpc::GenericStub>(channels_.back()));
    }
    calls_.resize(static_cast<size_t>(plan_.count));
    for (auto& call : calls_) call = std::make_unique<Call>();
  }

  // Connects and sends a few calls off the clock: the first call pays for the connection.
  void WarmUp() {
    for (const auto& channel : channels_) {
      if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(30))) {
        throw std::runtime_error("cannot connect");
      }
    }
    grpc::CompletionQueue cq;
    for (size_t i = 0; i < std::max<size_t>(4, stubs_.size()); ++i) {
      Call call;
      call.context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      for (const auto& [key, value] : plan_.metadata) call.context.AddMetadata(key, value);
      call.reader = stubs_[i % stubs_.size()]->PrepareUnaryCall(&call.context, method_,
                                                                plan_.payloads[i % plan_.payloads.size()], &cq);
      call.reader->StartCall();
      call.reader->Finish(&call.reply, &call.status, &call);
      void* tag = nullptr;
      bool ok = false;
      cq.Next(&tag, &ok);
    }
  }

  void Run() {
    start_ = Clock::now();
    stop_ = start_ + plan_.duration;
    std::thread reaper([this] { Reap(); });
    if (plan_.concurrency == 0) {
      SendOnSchedule();
    } else {
      for (int64_t i = 0; i < plan_.concurrency && TrySendNext(); ++i) {
      }
    }
    reaper.join();
  }

  const Record& record() const { return record_; }
  double done_at_s() const { return Seconds(done_at_); }
  double start_s() const { return std::chrono::duration<double>(start_.time_since_epoch()).count(); }

 private:
  double Seconds(Clock::time_point t) const { return std::chrono::duration<double>(t - start_).count(); }

  void Send(int64_t slot) {
    Call& call = *calls_[static_cast<size_t>(slot)];
    call.slot = slot;
    call.sent_at = Clock::now();
    // gRPC takes deadlines on the system clock; latency is measured on the steady one.
    call.context.set_deadline(std::chrono::system_clock::now() + plan_.timeout);
    for (const auto& [key, value] : plan_.metadata) call.context.AddMetadata(key, value);
    record_.sent[static_cast<size_t>(slot)] = Seconds(call.sent_at);
    in_flight_.fetch_add(1);
    auto& stub = *stubs_[static_cast<size_t>(slot) % stubs_.size()];
    call.reader = stub.PrepareUnaryCall(&call.context, method_, plan_.payloads[plan_.order[slot]], &cq_);
    call.reader->StartCall();
    call.reader->Finish(&call.reply, &call.status, &call);
  }

  // Closed loop: sends the next slot unless the run is over; false if it did not.
  bool TrySendNext() {
    const int64_t slot = next_slot_.fetch_add(1);
    if (slot >= plan_.count || Clock::now() >= stop_) {
      FinishSending();
      return false;
    }
    Send(slot);
    return true;
  }

  void SendOnSchedule() {
    for (int64_t slot = 0; slot < plan_.count; ++slot) {
      const auto due = start_ + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(plan_.schedule[static_cast<size_t>(slot)]));
      if (due >= stop_) break;
      std::this_thread::sleep_until(due);
      record_.lag[static_cast<size_t>(slot)] = std::chrono::duration<double>(Clock::now() - due).count();
      Send(slot);
    }
    FinishSending();
  }

  // Sending is over once every closed-loop caller (or the one open-loop sender) gave up; the reaper then stops
  // when nothing is in flight.
  void FinishSending() {
    if (finished_senders_.fetch_add(1) + 1 == senders_ && in_flight_.load() == 0) cq_.Shutdown();
  }

  void Reap() {
    void* tag = nullptr;
    bool ok = false;
    while (cq_.Next(&tag, &ok)) {
      Call& call = *static_cast<Call*>(tag);
      done_at_ = Clock::now();
      const auto slot = static_cast<size_t>(call.slot);
      record_.latency[slot] = std::chrono::duration<double>(done_at_ - call.sent_at).count();
      record_.code[slot] = static_cast<double>(call.status.error_code());
      call.reply.Clear();
      const bool more = plan_.concurrency > 0 && TrySendNext();
      if (in_flight_.fetch_sub(1) == 1 && !more && finished_senders_.load() == senders_) cq_.Shutdown();
    }
  }

  const std::string method_;
  Plan plan_;
  // Who sends: the open loop's one scheduler, or each of the closed loop's callers.
  const int64_t senders_ = plan_.concurrency == 0 ? 1 : plan_.concurrency;
  Record record_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs_;
  grpc::CompletionQueue cq_;
  std::vector<std::unique_ptr<Call>> calls_;
  Clock::time_point start_, stop_, done_at_;
  std::atomic<int64_t> next_slot_{0};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<int64_t> finished_senders_{0};
};

double CpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec * 1e-6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

void WriteRecord(const std::string& path, const Record& record) {
  std::ofstream out(path, std::ios::binary);
  for (const auto* column : {&record.sent, &record.latency, &record.lag, &record.code}) {
    out.write(reinterpret_cast<const char*>(column->data()), static_cast<std::streamsize>(column->size() * 8));
  }
  if (!out) throw std::runtime_error("cannot write record " + path);
}

}  // namespace

int main(int argc, char** argv) {
  const int connections = argc == 6 ? std::atoi(argv[5]) : 1;
  if ((argc != 5 && argc != 6) || connections < 1) {
    std::fprintf(stderr, "usage: %s TARGET METHOD PLAN RECORD [CONNECTIONS >= 1]\n", argv[0]);
    return 2;
  }
  // As in the server (rank_server.cc): the distribution's absl is built with lock-order checking on, which
  // costs ~10 % of the sender's core in absl::GraphCycles (perf, 4,000 calls/s) and proves nothing here.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  try {
    Generator generator(argv[1], argv[2], ReadPlan(argv[3]), connections);
    generator.WarmUp();
    const double cpu = CpuSeconds();
    const auto wall = Clock::now();
    generator.Run();
    const double wall_s = std::chrono::duration<double>(Clock::now() - wall).count();
    WriteRecord(argv[4], generator.record());
    std::printf("{\"cpu_s\": %.6f, \"wall_s\": %.6f, \"done_at_s\": %.6f, \"start_s\": %.9f}\n", CpuSeconds() - cpu,
                wall_s, generator.done_at_s(), generator.start_s());
  } catch (const std::exception& error) {
    std::fprintf(stderr, "adrank_loadgen: %s\n", error.what());
    return 1;
  }
  return 0;
}
