# The trained Fashion-MNIST model the tests in tests/fashion/ measure QuantSim (and PTQ) on: the
# weights the example trained, committed beside the tests (data/README.md says how they were
# made), so no training runs before the suite. unit-fashion-training.cpp proves that training
# itself still works.
# QKIT_FASHION_TEST_IMAGES (0: all 10,000) evaluates only the first N test images: the
# sanitizer build of scripts/test.sh sets it, because every test there runs several times
# slower; the normal build keeps the full set and so the full assertions.
set(QKIT_FASHION_TEST_IMAGES 0 CACHE STRING "Fashion-MNIST test images the fashion suite evaluates (0: all)")
# QKIT_FASHION_ACCURACY_STUDIES=OFF compiles out the tests that measure accuracy (PTQ, AdaRound,
# Sequential MSE, QAT W4A8/W8A8, AutoQuant, AMP, QuantAnalyzer, the debugging workflow, one
# epoch of training, the precision sweep, the float-mode ONNX Runtime comparison): the sanitizer
# build of scripts/test.sh sets it, since each costs minutes under AddressSanitizer and asserts
# numbers the normal build asserts, not memory safety (and compiling them there took minutes).
# What stays runs on the real model all the same: QuantSim equal to FP32, the analytical bias
# correction, a few steps of W4A4 range learning, the integer target mode.
option(QKIT_FASHION_ACCURACY_STUDIES "Build the Fashion-MNIST suite's accuracy studies" ON)
if(QKIT_FASHION_ACCURACY_STUDIES)
  set(qkit_fashion_studies 1)
else()
  set(qkit_fashion_studies 0)
endif()
set(qkit_suite_fashion_definitions
    QKIT_FASHION_MODEL="${CMAKE_CURRENT_LIST_DIR}/data/fashion_mobilenet.npz"
    QKIT_FASHION_TEST_IMAGES=${QKIT_FASHION_TEST_IMAGES}
    QKIT_FASHION_ACCURACY_STUDIES=${qkit_fashion_studies})
# The longest tests, longest first (tests/CMakeLists.txt: ctest starts them first).
set(qkit_suite_fashion_first
    "QAT on the trained model: W4A4"
    "AMP on the trained model"
    "AutoQuant \\+ AMP"
    "AutoQuant on the trained model"
    "Debugging workflow"
    "QAT on the trained model: W4A8"
    "trained model: exported QDQ"
    "training:"
    "AdaRound on the trained model: W4A8 per-channel"
    "QuantAnalyzer")
