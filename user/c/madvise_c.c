/* madvise_c: madvise effects and rules through musl libc (static). */
#include <string.h>

#include "check.h"

static void dontneed(void)
{
	unsigned char *p = anon(4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	unsigned char *s = anon(4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED);
	if (p == MAP_FAILED || s == MAP_FAILED) {
		check("dontneed_setup", 0);
		return;
	}
	memset(p, 0x11, 4 * PAGE);
	memset(s, 0x22, 4 * PAGE);
	check_errno("dontneed_private", madvise(p + PAGE, 2 * PAGE, MADV_DONTNEED), 0);
	check("dontneed_private_zeroes", all(p + PAGE, 2 * PAGE, 0));
	check("dontneed_private_outside_kept", all(p, PAGE, 0x11) && all(p + 3 * PAGE, PAGE, 0x11));
	check_errno("dontneed_shared", madvise(s, 4 * PAGE, MADV_DONTNEED), 0);
	check("dontneed_shared_keeps_data", all(s, 4 * PAGE, 0x22));
	munmap(p, 4 * PAGE);
	munmap(s, 4 * PAGE);
}

static void free_advice(void)
{
	unsigned char *p = anon(4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	if (p == MAP_FAILED) {
		check("free_setup", 0);
		return;
	}
	memset(p, 0x33, 4 * PAGE);
	check_errno("free_private", madvise(p, 4 * PAGE, MADV_FREE), 0);
	memset(p, 0x55, PAGE);
	check("free_written_after_keeps_data", all(p, PAGE, 0x55));
	check("free_untouched_old_or_zero", p[PAGE] == 0x33 || p[PAGE] == 0);
	munmap(p, 4 * PAGE);
}

static void populate(void)
{
	unsigned char *rw = anon(8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	unsigned char *ro = anon(8 * PAGE, PROT_READ, MAP_PRIVATE);
	if (rw == MAP_FAILED || ro == MAP_FAILED) {
		check("populate_setup", 0);
		return;
	}
	check_errno("populate_write_rw", madvise(rw, 8 * PAGE, MADV_POPULATE_WRITE), 0);
	check("populate_write_zeroed", all(rw, 8 * PAGE, 0));
	check_errno("populate_read_ro", madvise(ro, 8 * PAGE, MADV_POPULATE_READ), 0);
	check_errno("populate_write_ro_einval", madvise(ro, 8 * PAGE, MADV_POPULATE_WRITE), EINVAL);
	munmap(rw, 8 * PAGE);
	munmap(ro, 8 * PAGE);
}

static void rules(void)
{
	unsigned char *p = anon(3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	if (p == MAP_FAILED) {
		check("rules_setup", 0);
		return;
	}
	memset(p, 0x66, 3 * PAGE);
	check_errno("madv_normal", madvise(p, 3 * PAGE, MADV_NORMAL), 0);
	check_errno("madv_willneed", madvise(p, 3 * PAGE, MADV_WILLNEED), 0);
	check_errno("madv_unknown_einval", madvise(p, PAGE, 999), EINVAL);
	check_errno("madv_unaligned_einval", madvise(p + 1, PAGE, MADV_DONTNEED), EINVAL);
	check_errno("madv_len0_ok", madvise(p, 0, MADV_DONTNEED), 0);
	check("madv_invalid_kept_data", all(p, 3 * PAGE, 0x66));
	check_errno("hole_setup", munmap(p + PAGE, PAGE), 0);
	check_errno("hole_dontneed_enomem", madvise(p, 3 * PAGE, MADV_DONTNEED), ENOMEM);
	check("hole_dontneed_zeroes_both_sides", all(p, PAGE, 0) && all(p + 2 * PAGE, PAGE, 0));
	munmap(p, 3 * PAGE);
}

int main(void)
{
	dontneed();
	free_advice();
	populate();
	rules();
	return finish("madvise_c");
}
