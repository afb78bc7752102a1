/* Vector table and reset handler for the Cortex-M4F (mps2-an386): enable the FPU, copy
 * .data from flash, zero .bss, call main. Faults print one line over semihosting and make
 * QEMU exit with a failure status, so a crash fails the test instead of hanging it. */
#include <stdint.h>

#include "board.h"

extern uint32_t __data_start, __data_end, __data_load, __bss_start, __bss_end, __handler_stack_top;

int main(void);

/* Architecturally defined System Control Block registers (ARMv7-M ARM, B3.2). */
#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)
#define SCB_CFSR (*(volatile uint32_t *)0xE000ED28u)
#define SCB_HFSR (*(volatile uint32_t *)0xE000ED2Cu)
#define SCB_MMFAR (*(volatile uint32_t *)0xE000ED34u)
#define SCB_BFAR (*(volatile uint32_t *)0xE000ED38u)

void Reset_Handler(void) __attribute__((naked, noreturn));
static void reset(void) __attribute__((noreturn, used));

/* The core starts on the main stack (MSP, the vector table's first word: the handler stack).
 * Move the program to the process stack (PSP = top of .stack, CONTROL.SPSEL = 1) before any
 * C frame exists, so that a program stack overflow faults while the fault handler still runs
 * on the MSP and can report it. Naked: no frame of its own to lose in the switch. */
void Reset_Handler(void)
{
    __asm__ volatile("ldr r0, =__stack_top\n\t"
                     "msr psp, r0\n\t"
                     "movs r0, #2\n\t"
                     "msr control, r0\n\t"
                     "isb\n\t"
                     "b reset\n\t"
                     ".ltorg");
}

static void reset(void)
{
    /* CP10 and CP11 full access: the core and the library are built for the hard-float ABI,
     * so the FPU must be on before the first floating-point instruction. */
    SCB_CPACR |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");

    const uint32_t *src = &__data_load;
    for (uint32_t *dst = &__data_start; dst < &__data_end;)
        *dst++ = *src++;
    for (uint32_t *dst = &__bss_start; dst < &__bss_end;)
        *dst++ = 0;

    board_exit(main() == 0);
}

/* Every fault ends here (MemManage, BusFault and UsageFault are not enabled separately, so
 * they escalate to HardFault): report the fault status registers and fail. A program stack
 * overflow shows as a stacking error (CFSR bit 12, BusFault STKERR) with BFAR just below
 * 0x2000_0000. */
static void Fault_Handler(void)
{
    out_str("EL-HARDFAULT cfsr=");
    out_hex8(SCB_CFSR);
    out_str(" hfsr=");
    out_hex8(SCB_HFSR);
    out_str(" bfar=");
    out_hex8(SCB_BFAR);
    out_str(" mmfar=");
    out_hex8(SCB_MMFAR);
    out_nl();
    board_exit(0);
}

/* Nothing in this firmware enables an interrupt; any exception other than a fault is a bug
 * reported the same way. */
static void Default_Handler(void)
{
    out_str("EL-FAIL unexpected exception");
    out_nl();
    board_exit(0);
}

typedef void (*vector)(void);

/* Initial main stack pointer, then the 15 system exception vectors (entries 7..10 and 13 are
 * reserved). No external interrupts are used, so the table stops there. */
__attribute__((section(".vectors"), used)) static const vector vectors[16] = {
    (vector)(uintptr_t)&__handler_stack_top,
    Reset_Handler,
    Default_Handler, /* NMI */
    Fault_Handler,   /* HardFault */
    Fault_Handler,   /* MemManage */
    Fault_Handler,   /* BusFault */
    Fault_Handler,   /* UsageFault */
    0,
    0,
    0,
    0,
    Default_Handler, /* SVCall */
    Default_Handler, /* DebugMonitor */
    0,
    Default_Handler, /* PendSV */
    Default_Handler, /* SysTick */
};
