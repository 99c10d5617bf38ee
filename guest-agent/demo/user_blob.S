/* The user image (demo/user, linked at USER_IMAGE_BASE, flattened) embedded as data. */
	.section .user_image, "a"
	.p2align 12
	.globl user_image_start
user_image_start:
	.incbin USER_BIN_PATH
	.globl user_image_end
user_image_end:

	.section .note.GNU-stack, "", @progbits
