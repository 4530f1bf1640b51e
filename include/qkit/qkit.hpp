// qkit/qkit.hpp — the umbrella header: everything qkit offers that needs no optional
// dependency. ONNX export (qkit/io/onnx_export.hpp) needs qkit::onnx and is included apart.
#pragma once

#include "config.hpp"
#include "error.hpp"
#include "tensor/tensor.hpp"
#include "tensor/thread_pool.hpp"
#include "quant/encoding.hpp"
