#include "tls_credentials.h"

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <fstream>

namespace adrank {
namespace {

Status Readable(const char* option, const std::string& path) {
  std::ifstream file(path);
  if (!file.good()) return InvalidArgument(std::string(option) + ": cannot read " + path);
  return Status::Ok();
}

}  // namespace

Status CreateServerCredentials(const TlsFiles& files, std::shared_ptr<grpc::ServerCredentials>* out) {
  if (!files.enabled()) {
    if (!files.key_file.empty() || !files.client_ca_file.empty()) {
      return InvalidArgument("tls: a key or client CA without a certificate (tls cert_file is empty)");
    }
    *out = grpc::InsecureServerCredentials();
    return Status::Ok();
  }
  if (files.key_file.empty()) return InvalidArgument("tls: a certificate without its key (tls key_file is empty)");
  if (files.refresh_s < 1) return InvalidArgument("tls refresh_s must be >= 1");
  for (const auto& [option, path] : {std::pair{"tls cert_file", files.cert_file}, {"tls key_file", files.key_file}}) {
    Status readable = Readable(option, path);
    if (!readable.ok()) return readable;
  }
  const bool mutual = !files.client_ca_file.empty();
  if (mutual) {
    Status readable = Readable("tls client_ca_file", files.client_ca_file);
    if (!readable.ok()) return readable;
  }
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      files.key_file, files.cert_file, files.client_ca_file, static_cast<unsigned int>(files.refresh_s));
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (mutual) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  *out = grpc::experimental::TlsServerCredentials(options);
  if (!*out) return InvalidArgument("tls: gRPC refused the credentials for " + files.cert_file);
  return Status::Ok();
}

}  // namespace adrank
