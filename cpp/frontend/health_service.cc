#include "health_service.h"

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include <utility>

#include "unary_call.h"

namespace adrank {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Watch stream (health_service.h says what it sends). Its state is its queue's thread's, but for
// alarm_set_, which the service's lock guards.
class HealthWatch final {
 public:
  // Through Arm only (server_queues.h): the stream then owns itself.
  HealthWatch(HealthService* service, grpc::ServerCompletionQueue* cq)
      : ticket_(service->queues_), service_(service), cq_(cq) {
    context_.AsyncNotifyWhenDone(done_.tag());
    service_->RequestWatch(&context_, &request_, &writer_, cq_, cq_, arrived_.tag());
  }

  const std::string& service() const { return request_.service(); }

  // Wakes the stream on its queue's thread (its service's status changed, or the watches end). With the
  // service's lock held; once registered (its request is read before).
  void ChangedLocked() {
    if (alarm_set_) return;  // it will look at the status anyway
    alarm_set_ = true;
    alarm_.Set(cq_, gpr_time_0(GPR_CLOCK_MONOTONIC), changed_.tag());
  }

 private:
  void Arrived(bool ok) {
    if (!ok) {  // the server is shutting down: no call came, and no done event will
      Retire(this);
      return;
    }
    Arm<HealthWatch>(service_, cq_);
    {
      std::lock_guard<std::mutex> lock(service_->mu_);
      service_->watches_.insert(this);
    }
    Send();
  }

  // Writes the status if it is not the last one written, or ends the stream if the watches end; nothing while a
  // write is in flight (its completion looks again) or once the stream is over.
  void Send() {
    if (writing_ || over_) return;
    bool ending = false;
    HealthService::ServingStatus status = HealthCheckResponse::UNKNOWN;
    {
      std::lock_guard<std::mutex> lock(service_->mu_);
      ending = service_->ending_;
      status = service_->StatusLocked(service());
    }
    if (ending) {
      over_ = true;
      finishing_ = true;
      writer_.Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"), finished_.tag());
      return;
    }
    if (status == sent_) return;
    sent_ = status;
    response_.set_status(status);
    writing_ = true;
    writer_.Write(response_, written_.tag());
  }

  void Written(bool ok) {
    writing_ = false;
    if (!ok) over_ = true;  // the call has ended: its done event comes
    Send();
    RetireIfIdle();
  }

  void Changed(bool /*ok*/) {
    {
      std::lock_guard<std::mutex> lock(service_->mu_);
      alarm_set_ = false;
    }
    Send();
    RetireIfIdle();
  }

  void Finished(bool /*ok*/) {
    finishing_ = false;
    RetireIfIdle();
  }

  void Done(bool /*ok*/) {
    done_seen_ = true;
    over_ = true;
    {
      std::lock_guard<std::mutex> lock(service_->mu_);
      service_->watches_.erase(this);  // no alarm is set after this
    }
    RetireIfIdle();
  }

  // Once the call is done and none of its events is still to come.
  void RetireIfIdle() {
    if (!done_seen_ || writing_ || finishing_) return;
    {
      std::lock_guard<std::mutex> lock(service_->mu_);
      if (alarm_set_) return;
    }
    Retire(this);
  }

  ServerQueues::Ticket ticket_;  // first: counted until the stream is gone
  HealthService* const service_;
  grpc::ServerCompletionQueue* const cq_;
  grpc::ServerContext context_;
  HealthCheckRequest request_;
  HealthCheckResponse response_;
  grpc::ServerAsyncWriter<HealthCheckResponse> writer_{&context_};
  grpc::Alarm alarm_;
  bool alarm_set_ = false;                                            // guarded by the service's mu_
  HealthService::ServingStatus sent_ = HealthCheckResponse::UNKNOWN;  // none sent yet
  bool writing_ = false;
  bool finishing_ = false;
  bool over_ = false;  // no operation is started any more: finishing, a write failed, or done
  bool done_seen_ = false;
  CqStep<HealthWatch, &HealthWatch::Arrived> arrived_{this};
  CqStep<HealthWatch, &HealthWatch::Written> written_{this};
  CqStep<HealthWatch, &HealthWatch::Changed> changed_{this};
  CqStep<HealthWatch, &HealthWatch::Finished> finished_{this};
  CqStep<HealthWatch, &HealthWatch::Done> done_{this};
};

struct HealthService::Sites {
  UnaryCallSite<HealthService, HealthCheckRequest, HealthCheckResponse> check;
};

HealthService::HealthService(ServerQueues* queues) : queues_(queues), sites_(std::make_unique<Sites>()) {
  sites_->check = {queues, this, &HealthService::RequestCheck, [this](auto* call) {
                     const ServingStatus status = StatusOf(call->request().service());
                     if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
                       call->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "service name unknown"));
                       return;
                     }
                     call->response()->set_status(status);
                     call->Finish(grpc::Status::OK);
                   }};
}

HealthService::~HealthService() = default;

void HealthService::Arm() {
  sites_->check.Arm();
  for (const auto& queue : queues_->queues()) adrank::Arm<HealthWatch>(this, queue.get());
}

HealthService::ServingStatus HealthService::StatusOf(const std::string& service) {
  std::lock_guard<std::mutex> lock(mu_);
  return StatusLocked(service);
}

HealthService::ServingStatus HealthService::StatusLocked(const std::string& service) const {
  auto it = serving_.find(service);
  if (it == serving_.end()) return HealthCheckResponse::SERVICE_UNKNOWN;
  return it->second ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
}

void HealthService::SetServingStatus(const std::string& service, bool serving) {
  std::lock_guard<std::mutex> lock(mu_);
  serving_[service] = serving && !shut_down_;
  for (HealthWatch* watch : watches_) {
    if (watch->service() == service) watch->ChangedLocked();
  }
}

void HealthService::Shutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  if (shut_down_) return;
  shut_down_ = true;
  for (auto& [service, serving] : serving_) serving = false;
  for (HealthWatch* watch : watches_) watch->ChangedLocked();
}

void HealthService::EndWatches() {
  std::lock_guard<std::mutex> lock(mu_);
  ending_ = true;
  for (HealthWatch* watch : watches_) watch->ChangedLocked();
}

}  // namespace adrank
