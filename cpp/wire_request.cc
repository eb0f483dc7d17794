#include "wire_request.h"

#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>

namespace adrank {
namespace {

constexpr size_t kMaxDims = 32;  // numpy's limit, so that both front ends refuse the same shapes
constexpr int64_t kMaxElements = int64_t{1} << 40;

// A tensor of the request, decoded: numeric ones are views of raw_data; a text is its one string.
struct Decoded {
  const v1::Tensor* tensor = nullptr;
  std::string where;  // "candidates tensor 'dense'"
  bool text = false;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::vector<std::string_view> strings;  // text only, views into raw_data
};

std::optional<DType> CoreDType(int wire) {
  switch (wire) {
    case v1::DATA_TYPE_BOOL:
      return DType::kBool;
    case v1::DATA_TYPE_UINT8:
      return DType::kUInt8;
    case v1::DATA_TYPE_INT8:
      return DType::kInt8;
    case v1::DATA_TYPE_INT16:
      return DType::kInt16;
    case v1::DATA_TYPE_INT32:
      return DType::kInt32;
    case v1::DATA_TYPE_INT64:
      return DType::kInt64;
    case v1::DATA_TYPE_FLOAT16:
      return DType::kFloat16;
    case v1::DATA_TYPE_FLOAT32:
      return DType::kFloat32;
    case v1::DATA_TYPE_FLOAT64:
      return DType::kFloat64;
    default:
      return std::nullopt;
  }
}

std::string Quote(const std::string& name) { return "'" + name + "'"; }

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// Whether `data` is well-formed UTF-8 (no overlongs, surrogates or code points beyond U+10FFFF).
bool ValidUtf8(std::string_view data) {
  size_t i = 0;
  while (i < data.size()) {
    const auto c = static_cast<unsigned char>(data[i]);
    size_t extra = 0;
    uint32_t code = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1, code = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2, code = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3, code = c & 0x07;
    } else {
      return false;
    }
    if (i + extra >= data.size()) return false;  // the character's continuation bytes are cut off
    for (size_t k = 1; k <= extra; ++k) {
      const auto next = static_cast<unsigned char>(data[i + k]);
      if ((next & 0xC0) != 0x80) return false;
      code = (code << 6) | (next & 0x3F);
    }
    static const uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (code < kMin[extra] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
    i += extra + 1;
  }
  return true;
}

// Walks wire bytes by a descriptor to say where and why protobuf refused them. Only on the error path.
class ParseWalker {
 public:
  explicit ParseWalker(std::string_view data) : data_(data) {}

  // False with why() set at the first defect.
  bool Message(size_t pos, size_t end, const google::protobuf::Descriptor* type, const std::string& path, int depth,
               int group = 0) {
    if (depth > kMaxDepth) return Fail(pos, path, "nested more than " + std::to_string(kMaxDepth) + " deep");
    std::map<int, int> seen;  // repeated fields' next index
    while (pos < end) {
      const size_t tag_at = pos;
      uint64_t tag = 0;
      if (!Varint(&pos, end, &tag)) return Fail(tag_at, path, "a field tag is cut off or over-long");
      const uint64_t number = tag >> 3;
      const int wire = static_cast<int>(tag & 7);
      if (number == 0 || number > 536870911) return Fail(tag_at, path, "field number " + std::to_string(number));
      const google::protobuf::FieldDescriptor* field =
          type != nullptr ? type->FindFieldByNumber(static_cast<int>(number)) : nullptr;
      std::string where = Join(path, field != nullptr ? field->name() : "field " + std::to_string(number));
      if (field != nullptr && field->is_repeated()) where += "[" + std::to_string(seen[field->number()]++) + "]";
      switch (wire) {
        case 0: {
          uint64_t ignored = 0;
          if (!Varint(&pos, end, &ignored)) return Fail(tag_at, where, "its varint is cut off or over-long");
          break;
        }
        case 1:
        case 5: {
          const size_t width = wire == 1 ? 8 : 4;
          if (end - pos < width) return Fail(tag_at, where, "its " + std::to_string(width) + " bytes are cut off");
          pos += width;
          break;
        }
        case 2: {
          uint64_t length = 0;
          if (!Varint(&pos, end, &length)) return Fail(tag_at, where, "its length is cut off or over-long");
          if (length > end - pos) {
            return Fail(tag_at, where,
                        "claims " + std::to_string(length) + " bytes, " + std::to_string(end - pos) + " remain");
          }
          if (field != nullptr && !Payload(pos, pos + length, field, where, depth)) return false;
          pos += length;
          break;
        }
        case 3: {
          // A group (proto2's, unknown here): its fields up to the matching end tag.
          size_t inner = pos;
          if (!Message(pos, end, nullptr, where, depth + 1, static_cast<int>(number), &inner)) return false;
          pos = inner;
          break;
        }
        case 4:
          if (group == static_cast<int>(number)) {
            group_end_ = pos;
            return true;
          }
          return Fail(tag_at, where, "an end-group tag with no group open");
        default:
          return Fail(tag_at, where, "invalid wire type " + std::to_string(wire));
      }
    }
    if (group != 0) return Fail(end, path, "group " + std::to_string(group) + " is never closed");
    return true;
  }

  bool Message(size_t pos, size_t end, const google::protobuf::Descriptor* type, const std::string& path, int depth,
               int group, size_t* after) {
    if (!Message(pos, end, type, path, depth, group)) return false;
    *after = group_end_;
    return true;
  }

  const std::string& why() const { return why_; }

 private:
  static constexpr int kMaxDepth = 100;  // protobuf's own recursion limit

  static std::string Join(const std::string& path, const std::string& name) {
    return path.empty() ? name : path + "." + name;
  }

  bool Fail(size_t at, const std::string& where, const std::string& what) {
    why_ = (where.empty() ? std::string("the message") : where) + " at byte " + std::to_string(at) + ": " + what;
    return false;
  }

  bool Varint(size_t* pos, size_t end, uint64_t* value) {
    *value = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      if (*pos >= end) return false;
      const auto byte = static_cast<unsigned char>(data_[(*pos)++]);
      if (shift == 63 && byte > 1) return false;  // beyond 64 bits
      *value |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if ((byte & 0x80) == 0) return true;
    }
    return false;
  }

  // A length-delimited known field: a message, a string (UTF-8), or packed varints.
  bool Payload(size_t pos, size_t end, const google::protobuf::FieldDescriptor* field, const std::string& where,
               int depth) {
    using FD = google::protobuf::FieldDescriptor;
    switch (field->type()) {
      case FD::TYPE_MESSAGE:
        return Message(pos, end, field->message_type(), where, depth + 1);
      case FD::TYPE_STRING:
        if (!ValidUtf8(data_.substr(pos, end - pos))) return Fail(pos, where, "a string that is not valid UTF-8");
        return true;
      case FD::TYPE_INT32:
      case FD::TYPE_INT64:
      case FD::TYPE_UINT32:
      case FD::TYPE_UINT64:
      case FD::TYPE_SINT32:
      case FD::TYPE_SINT64:
      case FD::TYPE_BOOL:
      case FD::TYPE_ENUM:
        if (!field->is_repeated()) return true;  // parsed as an unknown field
        while (pos < end) {
          uint64_t ignored = 0;
          const size_t at = pos;
          if (!Varint(&pos, end, &ignored)) return Fail(at, where, "a packed varint is cut off or over-long");
        }
        return true;
      default:
        return true;
    }
  }

  std::string_view data_;
  std::string why_;
  size_t group_end_ = 0;
};

Status DecodeStrings(Decoded* d, int64_t count) {
  const std::string& raw = d->tensor->raw_data();
  size_t offset = 0;
  for (int64_t index = 0; index < count; ++index) {
    if (offset + 4 > raw.size()) {
      return InvalidArgument(d->where + ": raw_data ends inside the length of string " + std::to_string(index) +
                             " of " + std::to_string(count));
    }
    uint32_t length = 0;
    for (int b = 3; b >= 0; --b) length = (length << 8) | static_cast<unsigned char>(raw[offset + b]);
    offset += 4;
    if (offset + length > raw.size()) {
      return InvalidArgument(d->where + ": string " + std::to_string(index) + " claims " + std::to_string(length) +
                             " bytes but raw_data ends first");
    }
    std::string_view text(raw.data() + offset, length);
    if (!ValidUtf8(text)) {
      return InvalidArgument(d->where + ": string " + std::to_string(index) + " is not valid UTF-8");
    }
    d->strings.push_back(text);
    offset += length;
  }
  if (offset != raw.size()) {
    return InvalidArgument(d->where + ": raw_data has " + std::to_string(raw.size() - offset) +
                           " bytes after the last of " + std::to_string(count) + " strings");
  }
  return Status::Ok();
}

Status Decode(const v1::Tensor& tensor, const std::string& section, Decoded* d) {
  d->tensor = &tensor;
  d->where = section + " tensor " + Quote(tensor.name());
  d->shape.assign(tensor.shape().begin(), tensor.shape().end());
  if (d->shape.empty()) return InvalidArgument(d->where + ": shape is empty; the leading dimension is the row count");
  if (d->shape.size() > kMaxDims) {
    return InvalidArgument(d->where + ": shape has " + std::to_string(d->shape.size()) + " dimensions; at most " +
                           std::to_string(kMaxDims));
  }
  int64_t count = 1;
  for (int64_t dim : d->shape) {
    if (dim < 0) return InvalidArgument(d->where + ": shape " + ShapeString(d->shape) + " has a negative dimension");
    // No tensor of more than 2^40 elements, zero-sized or not (the Python front end's numpy could not
    // even describe its shape).
    if (dim > kMaxElements || (dim != 0 && count > kMaxElements / dim)) {
      return InvalidArgument(d->where + ": shape " + ShapeString(d->shape) + " is too large");
    }
    count *= dim;
  }
  if (tensor.dtype() == v1::DATA_TYPE_STRING) {
    d->text = true;
    return DecodeStrings(d, count);
  }
  const std::optional<DType> dtype = CoreDType(tensor.dtype());
  if (!dtype) return InvalidArgument(d->where + ": unknown dtype " + std::to_string(tensor.dtype()));
  d->dtype = *dtype;
  const size_t expected = static_cast<size_t>(count) * DTypeSize(*dtype);
  if (tensor.raw_data().size() != expected) {
    return InvalidArgument(d->where + ": raw_data has " + std::to_string(tensor.raw_data().size()) +
                           " bytes, but shape " + ShapeString(d->shape) + " of " + DTypeName(*dtype) + " needs " +
                           std::to_string(expected));
  }
  return Status::Ok();
}

Status DecodeSection(const google::protobuf::RepeatedPtrField<v1::Tensor>& tensors, const std::string& section,
                     std::map<std::string, Decoded>* out) {
  for (const v1::Tensor& tensor : tensors) {
    Decoded d;
    Status status = Decode(tensor, section, &d);
    if (!status.ok()) return status;
    if (!out->emplace(tensor.name(), std::move(d)).second) {
      return InvalidArgument(section + " tensor " + Quote(tensor.name()) + " appears twice");
    }
  }
  return Status::Ok();
}

Status CandidateRows(const std::map<std::string, Decoded>& candidates, const v1::RankRequest& request, int64_t* rows) {
  if (candidates.empty()) {
    return InvalidArgument("candidates: no tensor; a request carries at least one candidate tensor with N rows");
  }
  // The first tensor in wire order names the N the others must share.
  const std::string& first = request.candidates(0).name();
  const int64_t n = candidates.at(first).shape[0];
  for (const v1::Tensor& tensor : request.candidates()) {
    const int64_t count = candidates.at(tensor.name()).shape[0];
    if (count != n) {
      return InvalidArgument("candidates tensors disagree on N: " + Quote(first) + " has " + std::to_string(n) +
                             " rows, " + Quote(tensor.name()) + " has " + std::to_string(count));
    }
  }
  if (n == 0)
    return InvalidArgument("candidates tensor " + Quote(first) +
                           " has 0 rows; a request scores at least one candidate");
  *rows = n;
  return Status::Ok();
}

bool Finite(const Decoded& d, int64_t* bad_row) {
  const std::string& raw = d.tensor->raw_data();
  const int64_t rows = d.shape[0];
  const size_t per_row = rows ? raw.size() / DTypeSize(d.dtype) / static_cast<size_t>(rows) : 0;
  auto report = [&](size_t element) {
    *bad_row = per_row ? static_cast<int64_t>(element / per_row) : 0;
    return false;
  };
  if (d.dtype == DType::kFloat32) {
    const size_t n = raw.size() / 4;
    for (size_t i = 0; i < n; ++i) {
      float v;
      std::memcpy(&v, raw.data() + 4 * i, 4);
      if (!std::isfinite(v)) return report(i);
    }
  } else if (d.dtype == DType::kFloat64) {
    const size_t n = raw.size() / 8;
    for (size_t i = 0; i < n; ++i) {
      double v;
      std::memcpy(&v, raw.data() + 8 * i, 8);
      if (!std::isfinite(v)) return report(i);
    }
  } else if (d.dtype == DType::kFloat16) {
    const size_t n = raw.size() / 2;
    for (size_t i = 0; i < n; ++i) {
      uint16_t bits;
      std::memcpy(&bits, raw.data() + 2 * i, 2);
      if ((bits & 0x7C00) == 0x7C00) return report(i);  // all exponent bits set: inf or NaN
    }
  }
  return true;
}

// The text's UTF-8 bytes in a zero-padded row of `width`, cut before a character that would not fit.
std::unique_ptr<std::vector<uint8_t>> TextRow(std::string_view text, int64_t width) {
  size_t length = std::min(text.size(), static_cast<size_t>(width));
  while (length < text.size() && length > 0 && (static_cast<unsigned char>(text[length]) & 0xC0) == 0x80) --length;
  auto row = std::make_unique<std::vector<uint8_t>>(static_cast<size_t>(width), 0);
  std::memcpy(row->data(), text.data(), length);
  return row;
}

Status PrepareModel(const std::shared_ptr<const ServedModel>& model, const std::map<std::string, Decoded>& candidates,
                    const std::map<std::string, Decoded>& context, int64_t rows, ModelCall* call) {
  const std::string model_name = Quote(model->name);
  if (rows > model->max_candidates) {
    return InvalidArgument("candidates: " + std::to_string(rows) + " rows exceed model " + model_name + "'s limit of " +
                           std::to_string(model->max_candidates) + " (max_candidates)");
  }
  call->model = model;
  for (const ServedInput& input : model->inputs) {
    const std::string role = input.role == Role::kContext ? "context" : "candidate";
    auto in_context = context.find(input.name);
    const bool sent_as_context = in_context != context.end();
    const Decoded* d = sent_as_context ? &in_context->second : nullptr;
    if (!sent_as_context) {
      auto in_candidates = candidates.find(input.name);
      if (in_candidates == candidates.end()) {
        return InvalidArgument(role + " tensor " + Quote(input.name) + " is missing: model " + model_name +
                               " needs it");
      }
      d = &in_candidates->second;
    }
    if (sent_as_context != (input.role == Role::kContext)) {
      return InvalidArgument("tensor " + Quote(input.name) + " was sent in " +
                             (sent_as_context ? "context" : "candidates") + ", but model " + model_name +
                             " takes it as " + role);
    }
    auto& views = sent_as_context ? call->request.context : call->request.candidates;
    if (input.text_bytes > 0) {
      if (!d->text) {
        return InvalidArgument("context tensor " + Quote(input.name) + " has dtype " + DTypeName(d->dtype) +
                               "; model " + model_name + " expects string");
      }
      if (d->shape != std::vector<int64_t>{1}) {
        return InvalidArgument("context tensor " + Quote(input.name) + " has shape " + ShapeString(d->shape) +
                               "; expected [1] (one text)");
      }
      call->owned.push_back(TextRow(d->strings[0], input.text_bytes));
      const std::vector<uint8_t>& row = *call->owned.back();
      views.push_back({input.name, DType::kUInt8, {1, input.text_bytes}, row.data(), row.size()});
      continue;
    }
    const std::string where = role + " tensor " + Quote(input.name);
    if (d->text)
      return InvalidArgument(where + " is string; model " + model_name + " expects " + DTypeName(input.dtype));
    if (d->dtype != input.dtype) {
      return InvalidArgument(where + " has dtype " + DTypeName(d->dtype) + "; model " + model_name + " expects " +
                             DTypeName(input.dtype));
    }
    int64_t bad_row = 0;
    if (!input.allow_nonfinite && !Finite(*d, &bad_row)) {
      return InvalidArgument(where + ": row " + std::to_string(bad_row) + " holds NaN or inf; model " + model_name +
                             " allows finite values only");
    }
    const std::string& raw = d->tensor->raw_data();
    views.push_back({input.name, d->dtype, d->shape, raw.data(), raw.size()});
  }
  return Status::Ok();
}

Status ResolveModels(const v1::RankRequest& request, const ModelRegistry& registry, std::vector<Routed>* routed) {
  if (request.models().empty()) return InvalidArgument("models: empty; name at least one model to score");
  std::set<std::string> names;
  for (const v1::ModelSpec& spec : request.models()) {
    if (!names.insert(spec.name()).second) {
      return InvalidArgument("models: model " + Quote(spec.name()) + " is named twice");
    }
    if (spec.version() < 0) return InvalidArgument("models: version must be >= 0 (0 picks the serving version)");
  }
  const std::string& key = request.routing_key().empty() ? request.request_id() : request.routing_key();
  for (const v1::ModelSpec& spec : request.models()) {
    Routed route;
    Status status = registry.Route(spec.name(), spec.version(), key, &route);
    if (!status.ok()) return status;
    routed->push_back(std::move(route));
  }
  return Status::Ok();
}

// The shadow's inputs outlive the RPC: its views are repointed at copies it owns.
void OwnInputs(ModelCall* call) {
  for (auto* views : {&call->request.candidates, &call->request.context}) {
    for (TensorView& view : *views) {
      const auto* bytes = static_cast<const uint8_t*>(view.data);
      call->owned.push_back(std::make_unique<std::vector<uint8_t>>(bytes, bytes + view.byte_size));
      view.data = call->owned.back()->data();
    }
  }
}

Status CheckUnexpected(const std::vector<std::shared_ptr<const ServedModel>>& models, const v1::RankRequest& request) {
  std::set<std::string> taken;
  for (const auto& model : models) {
    for (const ServedInput& input : model->inputs) taken.insert(input.name);
  }
  std::string listed;
  for (const auto& model : models) listed += (listed.empty() ? "" : ", ") + Quote(model->name);
  for (const auto& [section, tensors] :
       {std::make_pair("candidates", &request.candidates()), std::make_pair("context", &request.context())}) {
    for (const v1::Tensor& tensor : *tensors) {
      if (taken.count(tensor.name()) == 0) {
        return InvalidArgument(std::string(section) + " tensor " + Quote(tensor.name()) +
                               " is not an input of the requested models (" + listed + ")");
      }
    }
  }
  std::set<std::string> in_candidates;
  for (const v1::Tensor& tensor : request.candidates()) in_candidates.insert(tensor.name());
  for (const v1::Tensor& tensor : request.context()) {
    if (in_candidates.count(tensor.name())) {
      return InvalidArgument("tensor " + Quote(tensor.name()) + " is sent both in candidates and in context");
    }
  }
  return Status::Ok();
}

}  // namespace

Status ParseError(std::string_view bytes) { return ParseError(bytes, v1::RankRequest::descriptor()); }

Status ParseError(std::string_view bytes, const google::protobuf::Descriptor* type) {
  ParseWalker walker(bytes);
  std::string why = "protobuf refused it";
  if (!walker.Message(0, bytes.size(), type, "", 0)) why = walker.why();
  return InvalidArgument("request: not an " + type->full_name() + " (" + std::to_string(bytes.size()) +
                         " bytes): " + why);
}

Status PrepareRank(const v1::RankRequest& request, const ModelRegistry& registry, std::vector<ModelCall>* calls,
                   std::vector<ModelCall>* shadows) {
  std::vector<Routed> routed;
  Status status = ResolveModels(request, registry, &routed);
  if (!status.ok()) return status;
  std::vector<std::shared_ptr<const ServedModel>> models;
  for (const Routed& route : routed) models.push_back(route.model);
  std::map<std::string, Decoded> candidates, context;
  status = DecodeSection(request.candidates(), "candidates", &candidates);
  if (status.ok()) status = DecodeSection(request.context(), "context", &context);
  if (!status.ok()) return status;
  int64_t rows = 0;
  status = CandidateRows(candidates, request, &rows);
  if (!status.ok()) return status;
  for (const v1::Tensor& tensor : request.context()) {
    const int64_t count = context.at(tensor.name()).shape[0];
    if (count != 1) {
      return InvalidArgument("context tensor " + Quote(tensor.name()) + " has " + std::to_string(count) +
                             " rows; context is one row, broadcast by the server");
    }
  }
  status = CheckUnexpected(models, request);
  if (!status.ok()) return status;
  calls->clear();
  calls->resize(models.size());
  for (size_t i = 0; i < models.size(); ++i) {
    status = PrepareModel(models[i], candidates, context, rows, &(*calls)[i]);
    if (!status.ok()) {
      // Refused by this model's own checks (its inputs, N, finiteness): counted at the version.
      models[i]->stats->Record(RequestRecord{status.code()});
      return status;
    }
  }
  if (shadows == nullptr) return Status::Ok();
  shadows->clear();
  for (const Routed& route : routed) {
    if (!route.shadow) continue;
    ModelCall shadow;
    if (!PrepareModel(route.shadow, candidates, context, rows, &shadow).ok()) {
      route.shadow->stats->Record(RequestRecord{StatusCode::kInvalidArgument});
      continue;
    }
    OwnInputs(&shadow);
    shadows->push_back(std::move(shadow));
  }
  return Status::Ok();
}

}  // namespace adrank
