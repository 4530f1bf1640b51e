// qkit/qat/qat.hpp — quantization-aware training in one include: QuantSim's backward
// (straight-through at every quantizer, range learning: sim/quantsim.hpp, quant/ste.hpp), the
// training loop (nn/fit.hpp) and batch-norm re-estimation after QAT with live batch norms.
//
// The backward lives on QuantSim itself, not in a pass of this folder: the straight-through
// masks are those of the forward that ran, so the quantizer inputs it keeps are QuantSim's own
// state, as the layers keep theirs for their backward.
#pragma once

#include "../nn/fit.hpp"
#include "../quant/ste.hpp"
#include "../sim/quantsim.hpp"
#include "batch_norm.hpp"
