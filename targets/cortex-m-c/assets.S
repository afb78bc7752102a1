/* The model and adapters in flash, the same files the Rust firmware embeds
 * (targets/cortex-m/assets/manifest.txt). The Makefile passes their paths as EL_ASSET_*
 * string macros. Each starts 32-byte aligned: GGUF's default alignment, which the parser
 * checks before reading tensors in place. */
#include "config.h"

#define ASSET(sym, path)      \
    .global sym;              \
    .global sym##_end;        \
    .balign 32;               \
    sym:                      \
    .incbin path;             \
    sym##_end:

    .section .el_assets, "a", %progbits
    .global __el_assets_start
    .global __el_assets_end
    .balign 32
__el_assets_start:
    ASSET(el_asset_base, EL_ASSET_BASE)
    ASSET(el_asset_adapter_a, EL_ASSET_ADAPTER_A)
    ASSET(el_asset_adapter_b, EL_ASSET_ADAPTER_B)
    ASSET(el_asset_adapter_wrong, EL_ASSET_ADAPTER_WRONG)
__el_assets_end:

