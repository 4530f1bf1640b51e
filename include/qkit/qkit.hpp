// qkit/qkit.hpp — the umbrella header: everything qkit offers that needs no optional
// dependency. ONNX export (qkit/io/onnx_export.hpp, qkit/sim/quantsim_export.hpp) needs the
// qkit::onnx target and is included on its own.
#pragma once

#include "config.hpp"
#include "error.hpp"

#include "tensor/tensor.hpp"
#include "tensor/thread_pool.hpp"
#include "tensor/gemm.hpp"
#include "tensor/conv.hpp"
#include "tensor/elementwise.hpp"
#include "tensor/pool.hpp"

#include "quant/encoding.hpp"
#include "quant/encoding_json.hpp"
#include "quant/fp16.hpp"
#include "quant/qdq.hpp"
#include "quant/ste.hpp"

#include "calib/range_setter.hpp"
#include "calib/stats.hpp"
#include "calib/minmax.hpp"
#include "calib/histogram.hpp"
#include "calib/tf_enhanced.hpp"
#include "calib/percentile.hpp"
#include "calib/mse.hpp"
#include "calib/entropy.hpp"

#include "data/dataset.hpp"
#include "data/batch.hpp"
#include "data/augment.hpp"

#include "nn/nn.hpp"
#include "nn/batch_norm_fold.hpp"

#include "io/atomic_file.hpp"
#include "io/encodings_file.hpp"
#include "io/idx.hpp"
#include "io/npz.hpp"
#include "io/tensor_proto.hpp"

#include "sim/sim_config.hpp"
#include "nn/dataflow.hpp"
#include "sim/model_validator.hpp"
#include "sim/quantizer.hpp"
#include "sim/quantsim.hpp"
#include "sim/calibrate.hpp"

#include "ptq/cross_layer_equalization.hpp"
#include "ptq/bias_correction.hpp"
#include "qat/qat.hpp"

#include "analysis/quant_analyzer.hpp"
