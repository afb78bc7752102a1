#!/usr/bin/env bash
# Run a Cortex-M firmware ELF in QEMU with semihosting (output on stdout, exit status from the
# firmware's semihosting exit). Used as the cargo runner of targets/cortex-m and by the host
# tests. EDGELORA_BOARD picks the machine: an386 (Cortex-M4F, default), an500 (Cortex-M7),
# an505 (Cortex-M33).
# an547 (Cortex-M55 with Helium).
# Extra QEMU flags (e.g. `-icount shift=0`) can be passed in EDGELORA_QEMU_FLAGS.
set -euo pipefail
elf="$1"
case "${EDGELORA_BOARD:-an386}" in
  an386) machine=mps2-an386; cpu=cortex-m4 ;;
  an500) machine=mps2-an500; cpu=cortex-m7 ;;
  an505) machine=mps2-an505; cpu=cortex-m33 ;;
  an547) machine=mps3-an547; cpu=cortex-m55 ;;
  *) echo "unknown EDGELORA_BOARD=${EDGELORA_BOARD}" >&2; exit 2 ;;
esac
run() {
  # shellcheck disable=SC2086
  timeout "${EDGELORA_QEMU_TIMEOUT:-300}" qemu-system-arm -machine "$machine" -cpu "$cpu" \
    -display none -monitor none -serial none -nodefaults -nic none \
    -semihosting-config enable=on,target=native ${EDGELORA_QEMU_FLAGS:-} -kernel "$elf"
}
# An image logging through defmt (the firmware's default feature) writes frames, not text:
# decode them with the knurling tools' defmt-print unless EDGELORA_DEFMT_RAW=1 (the tests
# decode themselves). The exit status stays QEMU's (the firmware's).
if [ "${EDGELORA_DEFMT_RAW:-0}" != 1 ] && grep -q '\.defmt' <(arm-none-eabi-objdump -h "$elf" 2>/dev/null || readelf -S "$elf" 2>/dev/null || true); then
  if ! command -v defmt-print >/dev/null; then
    echo "this image logs through defmt: install the decoder (cargo install defmt-print), or build with --no-default-features for plain text" >&2
    exit 2
  fi
  set -o pipefail
  run | defmt-print -e "$elf" --log-format '{s}' stdin
  exit "${PIPESTATUS[0]}"
fi
run
