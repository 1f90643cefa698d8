/* PASS/FAIL reporting shared by the C test programs; same format as the Rust
 * programs: "PASS name", "FAIL name (details)", "<prog>: N passed, M failed". */
#ifndef CHECK_H
#define CHECK_H

#include <errno.h>
#include <stdio.h>
#include <sys/mman.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define PAGE 4096UL
/* First address of the kernel half of the x86_64 address space. */
#define KERNEL_HALF ((void *)0xffff800000000000UL)

static int passed, failed;

static void check(const char *name, int ok)
{
	if (ok) {
		passed++;
		printf("PASS %s\n", name);
	} else {
		failed++;
		printf("FAIL %s (condition false)\n", name);
	}
}

/* Checks a libc call's result: success (ret 0) when want_errno is 0, else
 * failure (ret -1) with errno == want_errno. */
static void check_errno(const char *name, long ret, int want_errno)
{
	int got = ret == -1 ? errno : 0;
	if ((ret == 0 || ret == -1) && got == want_errno) {
		passed++;
		printf("PASS %s\n", name);
	} else {
		failed++;
		printf("FAIL %s (got ret %ld errno %d, want errno %d)\n", name, ret, got, want_errno);
	}
}

static void *anon(size_t len, int prot, int flags)
{
	return mmap(NULL, len, prot, flags | MAP_ANONYMOUS, -1, 0);
}

static int all(const unsigned char *p, size_t len, unsigned char v)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != v)
			return 0;
	return 1;
}

static int finish(const char *prog)
{
	printf("%s: %d passed, %d failed\n", prog, passed, failed);
	return failed ? 1 : 0;
}

#endif
