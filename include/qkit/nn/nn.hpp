// qkit/nn/nn.hpp — the whole layer engine in one include: layers, graph composition, visitors,
// loss, optimizers and weight files.
#pragma once

#include "activation.hpp"
#include "add.hpp"
#include "batch_norm.hpp"
#include "conv2d.hpp"
#include "flatten.hpp"
#include "graph.hpp"
#include "layer.hpp"
#include "linear.hpp"
#include "loss.hpp"
#include "optimizer.hpp"
#include "pooling.hpp"
#include "weights_file.hpp"
