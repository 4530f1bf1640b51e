# Encodings must not depend on the instruction set the user compiles for. One program
# (encodings_isa.cpp) is built three ways — baseline x86-64 (qkit::qkit alone, what users get by
# default), qkit::optimize (-march=native -ffp-contract=off), and a bare -march=native with
# -ffp-contract=fast (GCC's default: a user adding -march=native themselves, the compiler free
# to fuse a*b+c into FMAs) — each writes its encodings as hex floats, and the files must be
# byte-identical. Not built in the sanitizer configuration: it tests code generation, not memory
# safety, and the normal build runs it.
if(QKIT_SANITIZE)
  return()
endif()
set(_isa_out ${CMAKE_CURRENT_BINARY_DIR}/isa)
file(MAKE_DIRECTORY ${_isa_out})
foreach(variant baseline native native_contract)
  add_executable(qkit_isa_${variant} ${CMAKE_CURRENT_LIST_DIR}/encodings_isa.cpp)
  target_link_libraries(qkit_isa_${variant} PRIVATE qkit::qkit)
  add_test(NAME isa/encodings-${variant} COMMAND qkit_isa_${variant} ${_isa_out}/${variant}.txt)
  set_tests_properties(isa/encodings-${variant} PROPERTIES FIXTURES_SETUP isa_${variant})
endforeach()
target_link_libraries(qkit_isa_native PRIVATE qkit::optimize)
target_compile_options(qkit_isa_native_contract PRIVATE -march=native -ffp-contract=fast)
foreach(variant native native_contract)
  add_test(NAME isa/${variant}-equals-baseline
           COMMAND ${CMAKE_COMMAND} -E compare_files ${_isa_out}/baseline.txt ${_isa_out}/${variant}.txt)
  set_tests_properties(isa/${variant}-equals-baseline PROPERTIES
                       FIXTURES_REQUIRED "isa_baseline;isa_${variant}")
endforeach()
