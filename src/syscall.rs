//! The x86_64 Linux `syscall` instruction, for the paths that make their system calls
//! without libc: the core's wake paths (`sys::raw`) and the front (src/front.rs, which has
//! no libc at all). One file, included by both binaries.

/// `syscall` number `nr` with up to six arguments (unused ones 0): the kernel's result,
/// `-errno` on failure. Always inlined: a call would be one more page of code.
///
/// # Safety
/// As the system call `nr` with those arguments: every pointer valid for what the kernel
/// reads and writes through it.
#[inline(always)]
pub unsafe fn call(nr: usize, a: [usize; 6]) -> isize {
    let r: isize;
    // SAFETY: the x86_64 Linux system call convention: number in rax, arguments in rdi,
    // rsi, rdx, r10, r8, r9; the kernel returns in rax and clobbers rcx and r11 only. No
    // stack is used. What the call does to memory is the caller's contract.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => r,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    r
}
