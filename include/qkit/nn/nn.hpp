// qkit/nn/nn.hpp — the whole layer engine in one include: layers, graph composition, visitors,
// the dataflow view and float-graph rewrites (batch-norm folding), loss, optimizers, the
// training loop and weight files.
#pragma once

#include "activation.hpp"
#include "add.hpp"
#include "batch_norm.hpp"
#include "batch_norm_fold.hpp"
#include "conv2d.hpp"
#include "dataflow.hpp"
#include "evaluate.hpp"
#include "fit.hpp"
#include "flatten.hpp"
#include "graph.hpp"
#include "layer.hpp"
#include "linear.hpp"
#include "loss.hpp"
#include "optimizer.hpp"
#include "pooling.hpp"
#include "weighted_layer.hpp"
#include "weights_file.hpp"
