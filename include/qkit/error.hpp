// qkit/error.hpp — the exceptions qkit throws. Every message names what was wrong (the layer,
// quantizer, file or value) and what was expected; callers can catch qkit::error for all.
#pragma once

#include <stdexcept>
#include <string>

namespace qkit {

/// Base of every error qkit reports.
class error : public std::runtime_error {
 public:
  explicit error(const std::string& what) : std::runtime_error("qkit: " + what) {}
 protected:
  struct raw_tag {};
  error(raw_tag, const std::string& what) : std::runtime_error(what) {}
};

#define QKIT_DEFINE_ERROR(name, prefix)                                          \
  class name : public error {                                                    \
   public:                                                                       \
    explicit name(const std::string& what) : error(raw_tag{}, "qkit: " prefix ": " + what) {} \
  };

/// Tensor or layer shapes that do not fit together.
QKIT_DEFINE_ERROR(shape_error, "shape error")
/// A file (JSON, npz, IDX, TensorProto, ONNX) that is corrupt, truncated or of the wrong kind.
QKIT_DEFINE_ERROR(format_error, "format error")
/// A configuration value out of range or inconsistent (bitwidth, axis, quantsim config).
QKIT_DEFINE_ERROR(config_error, "config error")
/// Calibration that cannot produce an encoding (no data, NaN or Inf in the data).
QKIT_DEFINE_ERROR(calibration_error, "calibration error")
/// A data set that does not fit its use: labels that do not match the samples, a batch size of
/// 0, no data where some is needed, no labels where they are needed, a label a model cannot
/// predict.
QKIT_DEFINE_ERROR(data_error, "data error")
/// Training that cannot go on: a loss or a layer output that became NaN or Inf.
QKIT_DEFINE_ERROR(training_error, "training error")

#undef QKIT_DEFINE_ERROR

}  // namespace qkit
