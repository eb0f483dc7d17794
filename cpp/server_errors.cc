#include "server_errors.h"

#include <memory>
#include <mutex>
#include <utility>

namespace adrank {
namespace {

struct Sink {
  std::mutex mu;
  std::shared_ptr<const ServerErrorSink> sink;  // replaced whole; a report holds the one it took
};

// Never destroyed: a worker may still report while the process's statics are destroyed.
Sink& TheSink() {
  static Sink* sink = new Sink();
  return *sink;
}

}  // namespace

void SetServerErrorSink(ServerErrorSink sink) {
  std::shared_ptr<const ServerErrorSink> next;
  if (sink) next = std::make_shared<const ServerErrorSink>(std::move(sink));
  Sink& the = TheSink();
  {
    std::lock_guard<std::mutex> lock(the.mu);
    the.sink.swap(next);
  }
  // `next` now holds the old sink: released here, outside the lock (releasing a Python callable takes the GIL).
}

void ReportServerError(const ServerError& error) {
  std::shared_ptr<const ServerErrorSink> sink;
  {
    Sink& the = TheSink();
    std::lock_guard<std::mutex> lock(the.mu);
    sink = the.sink;
  }
  if (sink) (*sink)(error);
}

}  // namespace adrank
