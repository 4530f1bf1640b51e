# The trained Fashion-MNIST model the tests in tests/fashion/ measure QuantSim (and PTQ) on: the
# weights the example trained, committed beside the tests (data/README.md says how they were
# made), so no training runs before the suite. unit-fashion-training.cpp proves that training
# itself still works.
set(qkit_suite_fashion_definitions
    QKIT_FASHION_MODEL="${CMAKE_CURRENT_LIST_DIR}/data/fashion_mobilenet.npz")
