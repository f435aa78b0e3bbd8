//! The first instructions: one 32-bit entry shared by Xen PVH (`qemu -kernel`) and multiboot2
//! (GRUB, BIOS or UEFI). Both enter in 32-bit protected mode with paging off. The trampoline
//! zeroes .bss, identity-maps the first 4 GiB with 2 MiB pages, enters long mode and calls
//! `kernel_entry(loader_magic, info_phys)`. Rust then builds the page tables it keeps.

use core::arch::global_asm;

global_asm!(
    r#"
/* ---- multiboot2 header (must be in the first 32 KiB of the file) ---- */
.section .multiboot2, "a"
.balign 8
mb2_header_start:
    .long 0xe85250d6
    .long 0
    .long mb2_header_end - mb2_header_start
    .long 0x100000000 - (0xe85250d6 + (mb2_header_end - mb2_header_start))
    /* framebuffer request, optional: real PCs often have no COM1 */
    .balign 8
    .short 5
    .short 1
    .long 20
    .long 0
    .long 0
    .long 32
    .balign 8
    .short 0
    .short 0
    .long 8
mb2_header_end:

/* ---- Xen PVH note: XEN_ELFNOTE_PHYS32_ENTRY (18) ---- */
.section .note.Xen, "a"
.balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long _start32
    .balign 4

.section .data.boot, "aw"
.balign 8
.global boot_loader_magic
boot_loader_magic: .long 0
.global boot_info_phys
boot_info_phys: .long 0

.section .rodata.boot, "a"
.balign 16
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
boot_gdt_ptr:
    .short boot_gdt_ptr - boot_gdt - 1
    .long boot_gdt
    .long 0

.section .bss.boot, "aw", @nobits
.balign 4096
.global boot_pml4
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd: .skip 4096 * 4
.balign 16
boot_stack: .skip 65536
boot_stack_top:

.section .text.boot32, "ax"
.code32
.global _start32
_start32:
    cli
    cld
    mov [boot_loader_magic], eax
    mov [boot_info_phys], ebx

    /* .bss holds the boot stack and page tables: zero it first. */
    mov edi, offset __bss_start
    mov ecx, offset __bss_end
    sub ecx, edi
    shr ecx, 2
    xor eax, eax
    rep stosd

    mov esp, offset boot_stack_top

    /* PML4[0] -> PDPT; PDPT[0..4] -> four page directories of 2 MiB pages = 4 GiB identity. */
    mov eax, offset boot_pdpt
    or eax, 3
    mov [boot_pml4], eax
    xor ecx, ecx
1:
    mov eax, ecx
    shl eax, 12
    add eax, offset boot_pd
    or eax, 3
    mov [boot_pdpt + ecx * 8], eax
    inc ecx
    cmp ecx, 4
    jne 1b
    xor ecx, ecx
2:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov [boot_pd + ecx * 8], eax
    inc ecx
    cmp ecx, 2048
    jne 2b

    mov eax, cr4
    or eax, 0x20                /* PAE */
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax
    mov ecx, 0xC0000080         /* EFER */
    rdmsr
    or eax, 0x100               /* LME */
    wrmsr
    mov eax, cr0
    or eax, 0x80010001          /* PG | WP | PE */
    mov cr0, eax

    lgdt [boot_gdt_ptr]
    mov eax, offset start64
    push 0x08
    push eax
    retf

.code64
start64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, offset boot_stack_top
    xor ebp, ebp
    mov edi, [boot_loader_magic]
    mov esi, [boot_info_phys]
    call kernel_entry
3:
    cli
    hlt
    jmp 3b
"#
);
