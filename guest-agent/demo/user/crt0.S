/* User entry at USER_IMAGE_BASE: rdi = program number, rsi = pid. */
	.section .text.start, "ax"
	.globl _start
_start:
	andq $-16, %rsp
	call user_main
	movq %rax, %rdi
	movl $5, %eax /* SYS_EXIT */
	syscall
	ud2

	.section .note.GNU-stack, "", @progbits
