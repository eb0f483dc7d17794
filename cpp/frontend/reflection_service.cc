#include "reflection_service.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>

#include <set>
#include <utility>

#include "grpc/health/v1/health.pb.h"
#include "grpc/reflection/v1/reflection.pb.h"

namespace adrank {
namespace {

namespace reflection = grpc::reflection::v1;
using google::protobuf::DescriptorPool;
using google::protobuf::FileDescriptor;

// The files linked into this binary's pool that reflection describes. Naming one type of each forces its
// file into the pool whatever the linker keeps.
void LinkDescriptors() {
  (void)grpc::health::v1::HealthCheckRequest::descriptor();
  (void)reflection::ServerReflectionRequest::descriptor();
}

std::string Repackaged(const std::string& type, const std::string& from, const std::string& to) {
  const std::string prefix = "." + from + ".";
  return type.rfind(prefix, 0) == 0 ? "." + to + "." + type.substr(prefix.size()) : type;
}

// v1alpha's file: v1's under the v1alpha package.
google::protobuf::FileDescriptorProto V1AlphaFile() {
  google::protobuf::FileDescriptorProto file;
  reflection::ServerReflectionRequest::descriptor()->file()->CopyTo(&file);
  const std::string from = file.package(), to = "grpc.reflection.v1alpha";
  file.set_name("grpc/reflection/v1alpha/reflection.proto");
  file.set_package(to);
  file.clear_options();
  for (auto& message : *file.mutable_message_type()) {
    for (auto& field : *message.mutable_field()) {
      if (field.has_type_name()) field.set_type_name(Repackaged(field.type_name(), from, to));
    }
  }
  for (auto& service : *file.mutable_service()) {
    for (auto& method : *service.mutable_method()) {
      method.set_input_type(Repackaged(method.input_type(), from, to));
      method.set_output_type(Repackaged(method.output_type(), from, to));
    }
  }
  return file;
}

// `file` and what it imports, transitively, dependencies first, each once.
void AddFileAndImports(const FileDescriptor* file, std::set<std::string>* seen,
                       reflection::FileDescriptorResponse* out) {
  if (!seen->insert(file->name()).second) return;
  for (int i = 0; i < file->dependency_count(); ++i) AddFileAndImports(file->dependency(i), seen, out);
  google::protobuf::FileDescriptorProto proto;
  file->CopyTo(&proto);
  proto.SerializeToString(out->add_file_descriptor_proto());
}

void NotFound(const std::string& what, reflection::ServerReflectionResponse* response) {
  reflection::ErrorResponse* error = response->mutable_error_response();
  error->set_error_code(static_cast<int>(grpc::StatusCode::NOT_FOUND));
  error->set_error_message(what + " is not known to this server");
}

void DescribeFile(const FileDescriptor* file, const std::string& what, reflection::ServerReflectionResponse* response) {
  if (file == nullptr) {
    NotFound(what, response);
    return;
  }
  std::set<std::string> seen;
  AddFileAndImports(file, &seen, response->mutable_file_descriptor_response());
}

// One stream: reads a request, writes its response, and so on until the client half-closes; a method the server
// does not serve is answered UNIMPLEMENTED at once. One operation in flight at a time.
class ReflectionStream final {
 public:
  // Through Arm only (server_queues.h): the stream then owns itself.
  ReflectionStream(ReflectionService* service, grpc::ServerCompletionQueue* cq)
      : ticket_(service->queues()), service_(service), cq_(cq) {
    service_->generic()->RequestCall(&context_, &stream_, cq_, cq_, arrived_.tag());
  }

 private:
  void Arrived(bool ok) {
    if (!ok) {  // the server is shutting down: no call came
      Retire(this);
      return;
    }
    Arm<ReflectionStream>(service_, cq_);
    const std::string& method = context_.method();
    for (const char* service : {ReflectionService::kV1, ReflectionService::kV1Alpha}) {
      if (method == "/" + std::string(service) + "/ServerReflectionInfo") {
        stream_.Read(&request_, read_.tag());
        return;
      }
    }
    Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "method " + method + " is not served here"));
  }

  void Read(bool ok) {
    if (!ok) {  // the client is done sending
      Finish(grpc::Status::OK);
      return;
    }
    std::vector<grpc::Slice> slices;
    std::string bytes;
    if (request_.Dump(&slices).ok()) {
      for (const grpc::Slice& slice : slices) bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    }
    const std::string answer = service_->Answer(bytes);
    grpc::Slice slice(answer);
    response_ = grpc::ByteBuffer(&slice, 1);
    stream_.Write(response_, written_.tag());
  }

  void Written(bool ok) {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      return;
    }
    stream_.Read(&request_, read_.tag());
  }

  void Finish(const grpc::Status& status) { stream_.Finish(status, finished_.tag()); }
  void Finished(bool /*ok*/) { Retire(this); }

  ServerQueues::Ticket ticket_;  // first: counted until the stream is gone
  ReflectionService* const service_;
  grpc::ServerCompletionQueue* const cq_;
  grpc::GenericServerContext context_;
  grpc::GenericServerAsyncReaderWriter stream_{&context_};
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
  CqStep<ReflectionStream, &ReflectionStream::Arrived> arrived_{this};
  CqStep<ReflectionStream, &ReflectionStream::Read> read_{this};
  CqStep<ReflectionStream, &ReflectionStream::Written> written_{this};
  CqStep<ReflectionStream, &ReflectionStream::Finished> finished_{this};
};

}  // namespace

const char* const ReflectionService::kV1 = "grpc.reflection.v1.ServerReflection";
const char* const ReflectionService::kV1Alpha = "grpc.reflection.v1alpha.ServerReflection";

ReflectionService::ReflectionService(ReflectionServiceOptions options, ServerQueues* queues)
    : options_(std::move(options)),
      queues_(queues),
      generated_(*(LinkDescriptors(), DescriptorPool::generated_pool())),
      files_(&generated_, &derived_),
      pool_(&files_) {
  derived_.Add(V1AlphaFile());
}

void ReflectionService::Arm() {
  for (const auto& queue : queues_->queues()) adrank::Arm<ReflectionStream>(this, queue.get());
}

std::string ReflectionService::Answer(const std::string& bytes) const {
  reflection::ServerReflectionRequest request;
  reflection::ServerReflectionResponse response;
  if (!request.ParseFromString(bytes)) {
    reflection::ErrorResponse* error = response.mutable_error_response();
    error->set_error_code(static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
    error->set_error_message("request: not a ServerReflectionRequest");
    return response.SerializeAsString();
  }
  response.set_valid_host(request.host());
  *response.mutable_original_request() = request;
  const DescriptorPool* pool = &pool_;
  switch (request.message_request_case()) {
    case reflection::ServerReflectionRequest::kListServices:
      for (const std::string& name : options_.services) {
        response.mutable_list_services_response()->add_service()->set_name(name);
      }
      break;
    case reflection::ServerReflectionRequest::kFileByFilename:
      DescribeFile(pool->FindFileByName(request.file_by_filename()), "file " + request.file_by_filename(), &response);
      break;
    case reflection::ServerReflectionRequest::kFileContainingSymbol:
      DescribeFile(pool->FindFileContainingSymbol(request.file_containing_symbol()),
                   "symbol " + request.file_containing_symbol(), &response);
      break;
    case reflection::ServerReflectionRequest::kFileContainingExtension: {
      const auto& asked = request.file_containing_extension();
      const auto* type = pool->FindMessageTypeByName(asked.containing_type());
      const auto* extension = type != nullptr ? pool->FindExtensionByNumber(type, asked.extension_number()) : nullptr;
      DescribeFile(extension != nullptr ? extension->file() : nullptr,
                   "extension " + std::to_string(asked.extension_number()) + " of " + asked.containing_type(),
                   &response);
      break;
    }
    case reflection::ServerReflectionRequest::kAllExtensionNumbersOfType: {
      const auto* type = pool->FindMessageTypeByName(request.all_extension_numbers_of_type());
      if (type == nullptr) {
        NotFound("type " + request.all_extension_numbers_of_type(), &response);
        break;
      }
      std::vector<const google::protobuf::FieldDescriptor*> extensions;
      pool->FindAllExtensions(type, &extensions);
      auto* numbers = response.mutable_all_extension_numbers_response();
      numbers->set_base_type_name(type->full_name());
      for (const auto* extension : extensions) numbers->add_extension_number(extension->number());
      break;
    }
    default: {
      reflection::ErrorResponse* error = response.mutable_error_response();
      error->set_error_code(static_cast<int>(grpc::StatusCode::UNIMPLEMENTED));
      error->set_error_message("request: no message_request this server knows");
    }
  }
  return response.SerializeAsString();
}

}  // namespace adrank
