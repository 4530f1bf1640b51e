# Proves the two ways users take qkit: a vendored copy through add_subdirectory, and an
# installed copy through find_package. Each builds and runs the tiny consumer project.
set(_consumer_src ${CMAKE_CURRENT_LIST_DIR})
set(_consumer_bin ${CMAKE_CURRENT_BINARY_DIR}/consumer)
add_test(NAME consumer/install
  COMMAND ${CMAKE_COMMAND} --install ${PROJECT_BINARY_DIR} --prefix ${_consumer_bin}/prefix)
set_tests_properties(consumer/install PROPERTIES FIXTURES_SETUP qkit_installed)
add_test(NAME consumer/find_package
  COMMAND ${CMAKE_COMMAND} -DMODE=find_package -DSRC=${_consumer_src}/project
          -DBIN=${_consumer_bin}/find_package -DQKIT_PREFIX=${_consumer_bin}/prefix
          -DQKIT_SOURCE=${PROJECT_SOURCE_DIR} -P ${_consumer_src}/run_consumer.cmake)
set_tests_properties(consumer/find_package PROPERTIES FIXTURES_REQUIRED qkit_installed)
add_test(NAME consumer/add_subdirectory
  COMMAND ${CMAKE_COMMAND} -DMODE=add_subdirectory -DSRC=${_consumer_src}/project
          -DBIN=${_consumer_bin}/add_subdirectory -DQKIT_SOURCE=${PROJECT_SOURCE_DIR}
          -P ${_consumer_src}/run_consumer.cmake)
