# The trained Fashion-MNIST model the tests in tests/fashion/ measure QuantSim on. The example
# trains it once (minutes on two cores) or reloads it when the weights are already there.
set(QKIT_FASHION_MODEL_DIR ${CMAKE_BINARY_DIR}/fashion_model)
add_test(NAME fashion/train_model
  COMMAND fashion_mnist --data ${QKIT_FASHION_MNIST} --out ${QKIT_FASHION_MODEL_DIR} --train-only)
set_tests_properties(fashion/train_model PROPERTIES FIXTURES_SETUP fashion_model TIMEOUT 3600)
set(qkit_suite_fashion_properties FIXTURES_REQUIRED fashion_model)
set(qkit_suite_fashion_definitions
    QKIT_FASHION_MODEL="${QKIT_FASHION_MODEL_DIR}/fashion_mobilenet.npz")
