// TlsCredentials: the C++ front end's port credentials — plaintext, TLS, or mutual TLS — from certificate files
// that are watched, so that replacing them takes effect for new connections without a restart.
//
// Contract:
//   - cert_file empty: plaintext (grpc::InsecureServerCredentials).
//   - cert_file and key_file: TLS with that identity (a PEM chain and its PEM private key; both may name one file
//     holding the two, as server/tls.py publishes them, so that a rotation is one rename). client_ca_file
//     given: mutual TLS — a client must present a certificate that this CA bundle verifies, else its
//     handshake fails (the call never reaches the server).
//   - The files are re-read every refresh_s seconds by gRPC's FileWatcherCertificateProvider; connections
//     made after a change use the new material, connections already open keep theirs. The files this reads are
//     meant to be the server's own validated copy (python/adrank/server/tls.py publishes one there only once a
//     replacement has passed its checks), so a bad replacement never reaches a handshake.
//   - Create checks that each named file can be read now: INVALID_ARGUMENT naming the option and the file
//     otherwise (a key without a certificate, or the reverse, too).
//
// Options (defaults and why):
//   refresh_s = 1   How often gRPC looks at the files: a stat and, on change, a read. One second makes a
//                   rotation visible at once to a test or an operator, and costs nothing.
//
// Thread-safety: Create may be called from any thread; the credentials are gRPC's, shared by its threads.
#pragma once

#include <memory>
#include <string>

#include "status.h"

namespace grpc {
class ServerCredentials;
}

namespace adrank {

struct TlsFiles {
  std::string cert_file;       // empty: plaintext
  std::string key_file;        // with cert_file
  std::string client_ca_file;  // non-empty: mutual TLS against this CA bundle
  int refresh_s = 1;

  bool enabled() const { return !cert_file.empty(); }
};

Status CreateServerCredentials(const TlsFiles& files, std::shared_ptr<grpc::ServerCredentials>* out);

}  // namespace adrank
