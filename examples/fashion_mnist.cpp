// The Fashion-MNIST example: trains the MobileNet-style model of
// examples/models/fashion_mobilenet.hpp on the 60,000 training images (SGD with Nesterov
// momentum, cosine learning rate, flip/shift augmentation), evaluates it on the 10,000 test
// images and saves its weights to OUT/fashion_mobilenet.npz. A saved model is reloaded instead
// of retrained unless --retrain is given, so later stages start in seconds. Then QuantSim
// simulates it at FP32, W16A16, W8A16, W8A8, W4A8 (per-tensor and per-channel weights) and
// FP16, calibrated on 1,000 training images, prints test accuracy per precision, and exports
// each precision's encodings, weights and ONNX QDQ model into OUT/<precision>/. Finally it
// repairs per-tensor W4A8 and W8A8 with cross-layer equalization and bias correction
// (examples/models/ptq_pipeline.hpp), prints the accuracy before and after, and exports the
// repaired simulations into OUT/<precision>_cle_bc/.
//
//   fashion_mnist --data /usr/share/datasets/fashion-mnist --out out [--epochs N] [--retrain]
//                 [--train-only] [--threads N] [--seed S] [--adaround [--adaround-iterations N]]
//                 [--qat [--qat-steps N]] [--analyze] [--debug]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <optional>
#include <string>

#include <qkit/data/dataset.hpp>
#include <qkit/io/idx.hpp>
#include <qkit/nn/nn.hpp>

#include "models/analysis_pipeline.hpp"
#include "models/fashion_mobilenet.hpp"
#include "models/ptq_pipeline.hpp"
#include "models/qat_pipeline.hpp"
#include "models/quantize_pipeline.hpp"
#include "models/training.hpp"

namespace {

struct options {
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  std::string out_dir;
  std::size_t epochs = 12;
  bool retrain = false;
  bool train_only = false;
  std::size_t threads = 0;  // 0: all hardware threads
  std::uint32_t seed = 1;
  bool adaround = false;              // also the AdaRound / Sequential MSE table
  bool qat = false;                   // also the QAT table
  bool analyze = false;               // also QuantAnalyzer
  bool debug = false;                 // also the debugging workflow
  std::size_t qat_steps = 938;        // batches of 64 per QAT run (one epoch)
  std::size_t adaround_iterations = 0;  // 0: AIMET's default
};

void usage(std::FILE* to) {
  std::fprintf(to,
               "usage: fashion_mnist --data DIR --out DIR [--epochs N] [--retrain] [--train-only]\n"
               "                     [--threads N] [--seed S] [--adaround [--adaround-iterations N]]\n"
               "                     [--qat [--qat-steps N]] [--analyze] [--debug]\n"
               "  --data DIR     Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist)\n"
               "  --out DIR      where fashion_mobilenet.npz is written (required)\n"
               "  --epochs N     training epochs (default 12)\n"
               "  --retrain      train even if OUT/fashion_mobilenet.npz exists\n"
               "  --train-only   stop after the FP32 model is trained (or loaded) and evaluated\n"
               "  --threads N    worker threads (default: all hardware threads)\n"
               "  --seed S       initialization, shuffling and augmentation seed (default 1)\n"
               "  --adaround     also run the AdaRound / Sequential MSE table (AIMET's defaults:\n"
               "                 about 3 minutes per AdaRound row on two cores)\n"
               "  --adaround-iterations N  AdaRound steps per layer (default: AIMET's 10,000 or\n"
               "                 15,000 under 8 bits)\n"
               "  --qat          also run the QAT table (PTQ vs regular QAT vs range learning at\n"
               "                 W8A8, W4A8, W8A4, W4A4; about 10 minutes on two cores)\n"
               "  --qat-steps N  batches of 64 per QAT run (default 938: one epoch)\n"
               "  --analyze      also run QuantAnalyzer at W4A8 per-tensor (OUT/quant_analyzer/)\n"
               "  --debug        also run the debugging workflow at W4A8 per-tensor, allowed drop\n"
               "                 1% (OUT/debug_quantization/; AdaRound steps: --adaround-iterations)\n");
}

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::size_t parse_count(const std::string& flag, const std::string& v) {
  std::size_t pos = 0;
  unsigned long long n = 0;
  try {
    n = std::stoull(v, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos != v.size() || v.empty() || v[0] == '-')
    throw usage_error(flag + " expects a non-negative integer, got '" + v + "'");
  return std::size_t(n);
}

options parse_args(int argc, char** argv) {
  options o;
  bool have_out = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw usage_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--data") o.data_dir = value();
    else if (a == "--out") { o.out_dir = value(); have_out = true; }
    else if (a == "--epochs") o.epochs = parse_count(a, value());
    else if (a == "--retrain") o.retrain = true;
    else if (a == "--train-only") o.train_only = true;
    else if (a == "--threads") o.threads = parse_count(a, value());
    else if (a == "--seed") o.seed = std::uint32_t(parse_count(a, value()));
    else if (a == "--adaround") o.adaround = true;
    else if (a == "--qat") o.qat = true;
    else if (a == "--qat-steps") o.qat_steps = parse_count(a, value());
    else if (a == "--analyze") o.analyze = true;
    else if (a == "--debug") o.debug = true;
    else if (a == "--adaround-iterations") o.adaround_iterations = parse_count(a, value());
    else if (a == "--help" || a == "-h") { usage(stdout); std::exit(0); }
    else throw usage_error("unknown argument '" + a + "'");
  }
  if (!have_out) throw usage_error("--out DIR is required");
  if (o.epochs == 0) throw usage_error("--epochs must be at least 1");
  return o;
}

qkit::data::dataset load_split(const std::string& dir, bool train) {
  auto d = qkit::io::load_fashion_mnist(dir, train);
  fashion::normalize(d.images, fashion::pixel_mean, fashion::pixel_std);
  return qkit::data::dataset(std::move(d.images), d.labels);
}

/// Loads OUT/fashion_mobilenet.npz if present (unless --retrain); otherwise trains and saves.
template <class Model>
void train_or_load(Model& model, const options& o, const std::filesystem::path& weights) {
  if (!o.retrain && std::filesystem::exists(weights)) {
    try {
      qkit::nn::load_weights(model, weights);
    } catch (const qkit::error& e) {
      throw std::runtime_error(std::string(e.what()) + "\n(delete " + weights.string() +
                               " or pass --retrain to train a new model)");
    }
    std::printf("loaded %s (pass --retrain to train again)\n", weights.string().c_str());
    return;
  }
  const qkit::data::dataset train_set = load_split(o.data_dir, true);
  std::printf("training on %zu images for %zu epochs, %zu threads, %zu parameters\n",
              train_set.size(), o.epochs, qkit::get_num_threads(),
              qkit::nn::parameter_count(model));
  const auto t0 = std::chrono::steady_clock::now();
  fashion::train_recipe recipe;
  recipe.epochs = o.epochs;
  recipe.seed = o.seed;
  recipe.augment.fill = (0.0f - fashion::pixel_mean) / fashion::pixel_std;
  fashion::train(model, train_set, recipe, /*verbose=*/true);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("trained in %.1f s (%.1f s per epoch)\n", secs, secs / double(o.epochs));
  qkit::nn::save_weights(model, weights);
  std::printf("saved %s\n", weights.string().c_str());
}

int run(const options& o) {
  qkit::set_num_threads(o.threads);
  std::filesystem::create_directories(o.out_dir);
  const std::filesystem::path weights = std::filesystem::path(o.out_dir) / "fashion_mobilenet.npz";

  auto model = fashion::make_model();
  train_or_load(model, o, weights);

  const qkit::data::dataset test_set = load_split(o.data_dir, false);
  const auto t0 = std::chrono::steady_clock::now();
  const double acc = qkit::nn::evaluate(model, test_set);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("FP32 test accuracy: %.2f%% (%zu images, %.1f s)\n", 100.0 * acc,
              test_set.size(), secs);
  if (o.train_only) return 0;

  // QuantSim at every precision preset, calibrated on 1,000 training images; each precision's
  // encodings, folded weights and ONNX model are written to OUT/<precision>/.
  const qkit::data::dataset train_set = load_split(o.data_dir, true);
  fashion::precision_table(model, train_set, test_set, o.out_dir);

  // PTQ: cross-layer equalization and bias correction repair per-tensor W4A8 (and W8A8); the
  // repaired simulations are exported like the others, to OUT/<precision>_cle_bc/.
  fashion::repair_table(model, train_set, test_set, o.out_dir);

  // Learned rounding (AdaRound) and ranges (Sequential MSE), down to 2-bit weights.
  if (o.adaround) fashion::adaround_table(model, train_set, test_set, o.out_dir, o.adaround_iterations);
  if (o.qat) fashion::qat_table(model, train_set, test_set, o.qat_steps);
  if (o.analyze) fashion::analysis_table(model, train_set, test_set, o.out_dir);
  if (o.debug) fashion::debug_workflow(model, train_set, test_set, o.out_dir, o.adaround_iterations);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const usage_error& e) {
    std::fprintf(stderr, "fashion_mnist: %s\n", e.what());
    usage(stderr);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fashion_mnist: error: %s\n", e.what());
    return 1;
  }
}
