#!/usr/bin/env bash
# Run a RISC-V firmware ELF (targets/riscv) in `qemu-system-riscv32 -machine virt` with
# semihosting: output on stdout, exit status from the firmware's semihosting exit. `-bios none`
# starts the hart at the start of DRAM (0x8000_0000), where the image's `_start` is linked.
# The cargo runner of targets/riscv and what the host tests run. Extra QEMU flags (e.g.
# `-icount shift=0`) can be passed in EDGELORA_QEMU_FLAGS.
set -euo pipefail
elf="$1"
# shellcheck disable=SC2086
exec timeout "${EDGELORA_QEMU_TIMEOUT:-300}" qemu-system-riscv32 -machine virt -cpu rv32 -bios none \
  -display none -monitor none -serial none -nodefaults -nic none \
  -semihosting-config enable=on,target=native ${EDGELORA_QEMU_FLAGS:-} -kernel "$elf"
