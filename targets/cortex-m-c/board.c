/* Board support: ARM semihosting (stdout, exit), the arena, and the budget figures. */
#include "board.h"

#include <string.h>

/* ---- Semihosting (ARM "Semihosting for AArch32 and AArch64", v2) ----------------------- */

#define SYS_OPEN 0x01
#define SYS_WRITE 0x05
#define SYS_EXIT 0x18
#define ADP_STOPPED_APPLICATION_EXIT 0x20026 /* QEMU exits with status 0 */
#define ADP_STOPPED_RUNTIME_ERROR 0x20023    /* QEMU exits with status 1 */

/* On M-profile cores the semihosting trap is BKPT 0xAB: operation in r0, the address of the
 * argument block (or the argument itself) in r1, result in r0. */
static int semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

/* The host's stdout: the special file ":tt" opened for writing (mode 4, "w"), which QEMU with
 * target=native maps to its own stdout (where the host test reads the EL lines). */
static int stdout_handle = -1;

static void write_host(const char *s, size_t n)
{
    if (stdout_handle < 0) {
        const uint32_t open_args[3] = {(uint32_t)(uintptr_t)":tt", 4, 3};
        stdout_handle = semihost(SYS_OPEN, open_args);
        if (stdout_handle < 0)
            return; /* no host: nowhere to report it */
    }
    const uint32_t write_args[3] = {(uint32_t)stdout_handle, (uint32_t)(uintptr_t)s, (uint32_t)n};
    semihost(SYS_WRITE, write_args);
}

void board_exit(int ok)
{
    /* On AArch32 the SYS_EXIT argument is the reason code itself, not a block. */
    semihost(SYS_EXIT, (const void *)(uintptr_t)(ok ? ADP_STOPPED_APPLICATION_EXIT : ADP_STOPPED_RUNTIME_ERROR));
    for (;;) {
    }
}

/* ---- Output ------------------------------------------------------------------------------ */

/* One semihosting call per line: each call stops the emulated core, so fewer is faster. A
 * longer line is written in pieces (the longest EL line is about 200 bytes). */
static char line[512];
static size_t line_len;

static void flush(void)
{
    write_host(line, line_len);
    line_len = 0;
}

void out_bytes(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (line_len == sizeof line)
            flush();
        line[line_len++] = s[i];
    }
}

void out_str(const char *s) { out_bytes(s, strlen(s)); }

void out_nl(void)
{
    out_bytes("\n", 1);
    flush();
}

void out_u32(uint32_t v)
{
    char buf[10];
    size_t i = sizeof buf;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    out_bytes(buf + i, sizeof buf - i);
}

static const char HEX[] = "0123456789abcdef";

void out_hex8(uint32_t v)
{
    char buf[8];
    for (int i = 7; i >= 0; i--, v >>= 4)
        buf[i] = HEX[v & 0xF];
    out_bytes(buf, 8);
}

/* `\u{hex}` with the fewest digits, as Rust writes it. */
static void out_unicode_escape(uint32_t cp)
{
    char buf[8];
    size_t i = sizeof buf;
    do {
        buf[--i] = HEX[cp & 0xF];
        cp >>= 4;
    } while (cp != 0);
    out_str("\\u{");
    out_bytes(buf + i, sizeof buf - i);
    out_str("}");
}

/* The code points from U+0080 to U+07FF that Rust's `{:?}` on a `&str` writes as `\u{..}`
 * (not printable, or Grapheme_Extend), found by formatting each one with rustc 1.95. The
 * 2-byte range is where the decoded text of a byte-level vocabulary lands most often; above
 * it every character is printed as itself (exact for U+FFFD, the replacement character the
 * decoder emits; a line holding another character Rust escapes would differ from the host's,
 * and the test comparing them would say so). */
static const uint16_t ESCAPED[][2] = {
    {0x80, 0xa0},   {0xad, 0xad},   {0x300, 0x36f}, {0x378, 0x379}, {0x380, 0x383},
    {0x38b, 0x38b}, {0x38d, 0x38d}, {0x3a2, 0x3a2}, {0x483, 0x489}, {0x530, 0x530},
    {0x557, 0x558}, {0x58b, 0x58c}, {0x590, 0x5bd}, {0x5bf, 0x5bf}, {0x5c1, 0x5c2},
    {0x5c4, 0x5c5}, {0x5c7, 0x5cf}, {0x5eb, 0x5ee}, {0x5f5, 0x605}, {0x610, 0x61a},
    {0x61c, 0x61c}, {0x64b, 0x65f}, {0x670, 0x670}, {0x6d6, 0x6dd}, {0x6df, 0x6e4},
    {0x6e7, 0x6e8}, {0x6ea, 0x6ed}, {0x70e, 0x70f}, {0x711, 0x711}, {0x730, 0x74c},
    {0x7a6, 0x7b0}, {0x7b2, 0x7bf}, {0x7eb, 0x7f3}, {0x7fb, 0x7fd},
};

static int rust_escapes(uint32_t cp)
{
    if (cp < 0x20 || cp == 0x7f)
        return 1;
    for (size_t i = 0; i < sizeof ESCAPED / sizeof ESCAPED[0]; i++)
        if (cp >= ESCAPED[i][0] && cp <= ESCAPED[i][1])
            return 1;
    return 0;
}

void out_debug_str(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    out_bytes("\"", 1);
    size_t i = 0;
    while (i < n) {
        unsigned char b = p[i];
        /* Length and value of the UTF-8 sequence at i (the decoder only emits valid UTF-8;
         * a stray byte is taken as a 1-byte sequence rather than read past the end). */
        size_t len = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
        if (i + len > n)
            len = 1;
        uint32_t cp = len == 1 ? b : (uint32_t)(b & (0x7F >> len));
        for (size_t k = 1; k < len; k++)
            cp = (cp << 6) | (p[i + k] & 0x3F);
        switch (cp) {
        case '\t': out_str("\\t"); break;
        case '\r': out_str("\\r"); break;
        case '\n': out_str("\\n"); break;
        case '\0': out_str("\\0"); break;
        case '\\': out_str("\\\\"); break;
        case '"': out_str("\\\""); break;
        default:
            if (rust_escapes(cp))
                out_unicode_escape(cp);
            else
                out_bytes(s + i, len);
        }
        i += len;
    }
    out_bytes("\"", 1);
}

/* ---- Arena -------------------------------------------------------------------------------- */

extern uint8_t __arena_start, __arena_end;
static uintptr_t arena_next;

void *arena_take(size_t bytes)
{
    if (arena_next == 0)
        arena_next = (uintptr_t)&__arena_start;
    uintptr_t at = (arena_next + 7u) & ~(uintptr_t)7u;
    uintptr_t end = (uintptr_t)&__arena_end;
    if (at > end || bytes > end - at)
        return NULL;
    arena_next = at + bytes;
    return (void *)at;
}

size_t arena_used(void)
{
    return arena_next == 0 ? 0 : arena_next - (uintptr_t)&__arena_start;
}

/* ---- Budget ------------------------------------------------------------------------------- */

extern uint8_t __flash_start, __stack_bottom, __stack_top, __data_start, __data_end, __bss_start, __bss_end,
    __data_load;
extern uint8_t __el_assets_start, __el_assets_end;

#define PAINT 0x5afec0deu

/* noinline: its own frame is the one left alone; everything below it is painted. */
__attribute__((noinline)) void stack_paint(void)
{
    uintptr_t sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    /* Leave 256 bytes under the current stack pointer alone (this function's frame). */
    volatile uint32_t *hi = (volatile uint32_t *)((sp - 256u) & ~(uintptr_t)3u);
    for (volatile uint32_t *p = (volatile uint32_t *)&__stack_bottom; p < hi; p++)
        *p = PAINT;
}

size_t stack_high_water(void)
{
    const volatile uint32_t *p = (const volatile uint32_t *)&__stack_bottom;
    while (p < (const volatile uint32_t *)&__stack_top && *p == PAINT)
        p++;
    return (size_t)((uintptr_t)&__stack_top - (uintptr_t)p);
}

void print_budget(void)
{
    /* Flash: vectors, code, constants and .data's initial values; the assets apart. */
    uint32_t assets = (uint32_t)(&__el_assets_end - &__el_assets_start);
    uint32_t data = (uint32_t)(&__data_end - &__data_start);
    uint32_t code = (uint32_t)((uintptr_t)&__data_load - (uintptr_t)&__flash_start) - assets;
    uint32_t statics = data + (uint32_t)(&__bss_end - &__bss_start);
    uint32_t stack = (uint32_t)stack_high_water();
    uint32_t arena = (uint32_t)arena_used();
    out_str("EL-BUDGET flash_runtime=");
    out_u32(code + data);
    out_str(" assets=");
    out_u32(assets);
    out_str(" ram_static=");
    out_u32(statics);
    out_str(" arena=");
    out_u32(arena);
    out_str(" stack_hwm=");
    out_u32(stack);
    out_str(" ram_total=");
    out_u32(statics + arena + stack);
    out_nl();
}
