/* Board support for the C firmware: semihosting output and exit, the arena of caller-owned
 * memory, and the budget figures (see an386.ld for the memory layout). */
#ifndef EL_BOARD_H
#define EL_BOARD_H

#include <stddef.h>
#include <stdint.h>

/* ---- Output: semihosting stdout, one write per line ----------------------------------- */

/* Append `n` bytes to the current output line (written out at each '\n'). */
void out_bytes(const char *s, size_t n);
/* Append a NUL-terminated string. */
void out_str(const char *s);
/* Append an unsigned decimal number. */
void out_u32(uint32_t v);
/* Append exactly 8 lowercase hex digits (Rust's `{:08x}`). */
void out_hex8(uint32_t v);
/* Append `n` bytes of UTF-8 as Rust's `{:?}` prints a `&str`: in double quotes, with
 * `\t \r \n \0 \\ \"` escaped and the characters Rust does not print as themselves written as
 * `\u{hex}` (see board.c for which). */
void out_debug_str(const char *s, size_t n);
/* Append a '\n' and write the line to the host. */
void out_nl(void);

/* Leave QEMU: exit status 0 if `ok`, 1 otherwise. */
void board_exit(int ok) __attribute__((noreturn));

/* ---- Arena: the RAM after .bss, handed out once, never freed -------------------------- */

/* `bytes` bytes aligned to 8 (EL_ALIGN), or NULL when the arena is exhausted. */
void *arena_take(size_t bytes);
/* Bytes taken so far. */
size_t arena_used(void);

/* ---- Budget --------------------------------------------------------------------------- */

/* Paint the stack below the current frame; call first thing in main. */
void stack_paint(void);
/* Bytes of stack used since stack_paint (from the top of the stack to the deepest word no
 * longer painted). */
size_t stack_high_water(void);
/* Print the EL-BUDGET line: flash (code + constants, assets apart), RAM (statics, arena
 * used, stack high-water mark). */
void print_budget(void);

#endif /* EL_BOARD_H */
