# CMake toolchain file: GNU Arm Embedded (arm-none-eabi-gcc + newlib) for the Cortex-M4F.
#   (from targets/cortex-m-c) cmake -B build-cmake -DCMAKE_TOOLCHAIN_FILE=cmake/arm-none-eabi.cmake
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)

set(CROSS arm-none-eabi- CACHE STRING "Prefix of the cross tools")
set(CMAKE_C_COMPILER ${CROSS}gcc)
set(CMAKE_ASM_COMPILER ${CROSS}gcc)
set(CMAKE_SIZE ${CROSS}size CACHE FILEPATH "size tool")

# No OS to run a test executable on: let CMake's compiler checks build a static library.
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)

# Cortex-M4 with the single-precision FPU, hard-float ABI: what thumbv7em-none-eabihf (the
# Rust target of the staticlib) is built for.
set(EL_CPU_FLAGS "-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16")
set(CMAKE_C_FLAGS_INIT "${EL_CPU_FLAGS}")
set(CMAKE_ASM_FLAGS_INIT "${EL_CPU_FLAGS}")
set(CMAKE_EXE_LINKER_FLAGS_INIT "${EL_CPU_FLAGS}")

set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
