/* mmap_c: mmap/munmap/mprotect rules through musl libc (static). */
#include <string.h>

#include "check.h"

/* mmap's result in check_errno form: 0 on success, -1 on failure. */
static long mmap_ret(void *p)
{
	return p == MAP_FAILED ? -1 : 0;
}

static void anonymous(void)
{
	unsigned char *p = anon(4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	check("anon_private_map", p != MAP_FAILED);
	if (p == MAP_FAILED)
		return;
	check("anon_private_zeroed", all(p, 4 * PAGE, 0));
	memset(p, 0x5a, 4 * PAGE);
	check("anon_private_readback", all(p, 4 * PAGE, 0x5a));
	check_errno("anon_private_munmap", munmap(p, 4 * PAGE), 0);

	unsigned char *s = anon(2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED);
	check("anon_shared_map", s != MAP_FAILED);
	if (s == MAP_FAILED)
		return;
	memset(s, 0x21, 2 * PAGE);
	check("anon_shared_readback", all(s, 2 * PAGE, 0x21));
	munmap(s, 2 * PAGE);
}

static void fixed(void)
{
	unsigned char *p = anon(3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	if (p == MAP_FAILED) {
		check("fixed_setup", 0);
		return;
	}
	memset(p, 0xaa, 3 * PAGE);
	void *r = mmap(p + PAGE, PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	check("fixed_returns_addr", r == p + PAGE);
	check("fixed_replaced_page_zeroed", all(p + PAGE, PAGE, 0));
	check("fixed_neighbours_kept", all(p, PAGE, 0xaa) && all(p + 2 * PAGE, PAGE, 0xaa));
	r = mmap(p + PAGE, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	check_errno("noreplace_overlap_eexist", mmap_ret(r), EEXIST);
	check_errno("munmap_middle", munmap(p + PAGE, PAGE), 0);
	check_errno("munmap_hole_ok", munmap(p + PAGE, PAGE), 0);
	check_errno("mprotect_over_hole_enomem", mprotect(p, 3 * PAGE, PROT_READ), ENOMEM);
	check_errno("munmap_all", munmap(p, 3 * PAGE), 0);
}

static void invalid(void)
{
	int rw = PROT_READ | PROT_WRITE;
	check_errno("mmap_len0_einval", mmap_ret(anon(0, rw, MAP_PRIVATE)), EINVAL);
	check_errno("mmap_no_type_einval", mmap_ret(anon(PAGE, rw, 0)), EINVAL);
	void *r = mmap((void *)0x10000000123UL, PAGE, rw, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	check_errno("mmap_fixed_unaligned_einval", mmap_ret(r), EINVAL);
	r = mmap(KERNEL_HALF, PAGE, rw, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	check_errno("mmap_fixed_kernel_half_enomem", mmap_ret(r), ENOMEM);
	check_errno("mmap_bad_fd_ebadf", mmap_ret(mmap(NULL, PAGE, rw, MAP_PRIVATE, -1, 0)), EBADF);
	check_errno("munmap_unaligned_einval", munmap((void *)0x10000000123UL, PAGE), EINVAL);
	check_errno("munmap_len0_einval", munmap((void *)0x10000000000UL, 0), EINVAL);
	check_errno("munmap_kernel_half_einval", munmap(KERNEL_HALF, PAGE), EINVAL);
}

static void split(void)
{
	unsigned char *p = anon(3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	if (p == MAP_FAILED) {
		check("split_setup", 0);
		return;
	}
	memset(p, 0x77, 3 * PAGE);
	check_errno("mprotect_middle_read", mprotect(p + PAGE, PAGE, PROT_READ), 0);
	check("mprotect_keeps_data", all(p, 3 * PAGE, 0x77));
	check_errno("mprotect_back_rw", mprotect(p + PAGE, PAGE, PROT_READ | PROT_WRITE), 0);
	p[PAGE] = 1;
	check("mprotect_rw_writable", p[PAGE] == 1);
	check_errno("mprotect_unknown_bit_einval", mprotect(p, PAGE, PROT_READ | 0x10), EINVAL);
	check_errno("mprotect_none", mprotect(p, 3 * PAGE, PROT_NONE), 0);
	munmap(p, 3 * PAGE);
}

int main(void)
{
	anonymous();
	fixed();
	invalid();
	split();
	return finish("mmap_c");
}
