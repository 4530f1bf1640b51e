# The trained Fashion-MNIST model the tests in tests/fashion/ measure QuantSim (and PTQ) on: the
# weights the example trained, committed beside the tests (data/README.md says how they were
# made), so no training runs before the suite. unit-fashion-training.cpp proves that training
# itself still works.
# QKIT_FASHION_TEST_IMAGES (0: all 10,000) evaluates only the first N test images: the
# sanitizer build of scripts/test.sh sets it, because every test there runs several times
# slower; the normal build keeps the full set and so the full assertions.
set(QKIT_FASHION_TEST_IMAGES 0 CACHE STRING "Fashion-MNIST test images the fashion suite evaluates (0: all)")
set(qkit_suite_fashion_definitions
    QKIT_FASHION_MODEL="${CMAKE_CURRENT_LIST_DIR}/data/fashion_mobilenet.npz"
    QKIT_FASHION_TEST_IMAGES=${QKIT_FASHION_TEST_IMAGES})
