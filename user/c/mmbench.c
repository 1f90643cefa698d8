/* mmbench: the cost of common memory-management paths, per operation.
 *
 * For each operation: one warm-up round (at most WARMUP operations), then
 * ROUNDS timed rounds of N operations each (N = 4096, 1024 where one
 * operation costs more than about 10,000 instructions, 16 for the huge-page
 * and 1 MiB rows; `mmbench MAX` caps every N at MAX for a quick run, and
 * `mmbench MAX NAME...` runs only the named operations, e.g. under the
 * kernel's profiler).
 * Each round's cost is (CLOCK_MONOTONIC after - before) / operations; the
 * program prints the median round, one line per operation:
 *
 *   mmbench: NAME: COST        COST = ns per operation, rounded
 *   mmbench: NAME: unsupported the kernel returned ENOSYS
 *   mmbench: NAME: error ERRNO a call failed (the program goes on)
 *   mmbench: NAME: no-thp ...  thp_dontneed got no huge pages
 *   mmbench: done
 *
 * The operations (one operation = what one COST pays for):
 *   getpid                      syscall(SYS_getpid)
 *   clock_gettime               clock_gettime(CLOCK_MONOTONIC) (vDSO on both)
 *   fault_4k                    first write to an untouched 4 KiB page (THP
 *                               off for the range: MADV_NOHUGEPAGE)
 *   dontneed_refault_4k         MADV_DONTNEED one touched page, write it again
 *                               (its neighbours stay mapped: see map_middle)
 *   munmap_touched_per_page     one munmap of 4096 touched pages, per page
 *   mmap_munmap_4k              mmap + munmap of 4 KiB, untouched
 *   mmap_write_munmap_4k        mmap + one write + munmap of 4 KiB (both next
 *                               to mapped pages: see make_hole)
 *   mprotect_split_merge        mprotect the middle page of a touched 64-page
 *                               RW mapping to R (split), then RW (merge)
 *   brk_write_shrink            brk up one page, write it, brk back
 *   sparse_slot_fault_dontneed  write one page in a never-used 2 MiB slot of a
 *                               sparse 64 GiB MAP_NORESERVE area, then
 *                               MADV_DONTNEED the slot
 *   thp_dontneed                MADV_DONTNEED of 2 MiB mapped by a huge page
 *                               (MADV_HUGEPAGE; the faults are not timed)
 *   populate_1m_per_page        mmap of 1 MiB with MAP_POPULATE, per 4 KiB page
 *   madv_free_reuse             MADV_FREE one touched page, write it again
 *                               (as dontneed_refault_4k)
 *   open_close                  open + close of this program's file
 *   open_read_4k_close          open + read of 4 KiB + close of that file
 *   pread_4k                    pread of 4 KiB at offset 0 of that file
 *
 * Under QEMU's `-icount shift=0` one guest ns is one guest instruction on
 * both kernels, so COST is instructions per operation (`boot --mmbench`
 * runs it on this kernel and on Linux and prints both side by side).
 * Setup and teardown (mapping, touching, unmapping what the timed loop
 * does not cover) stay outside the timed part. Exit status 0, or 1 if an
 * operation failed with an error (neither `unsupported` nor `no-thp`).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define HPAGE (2UL << 20)
#define ROUNDS 5
#define WARMUP 64
/* Returned by thp_dontneed when the kernel gave no huge pages. */
#define E_NOTHP (-2)
/* Returned when a read was short. */
#define E_SHORT (-3)
/* Returned when a mapping did not land where the benchmark needs it. */
#define E_LAYOUT (-4)

static const char *self_path = "/bin/mmbench";
static char buf[PAGE];

static int now(uint64_t *ns)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		return errno;
	*ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	return 0;
}

static void touch(volatile char *p)
{
	*p = 1;
}

/* Anonymous private RW mapping of len bytes with THP off for it. */
static int map_small(size_t len, char **out)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return errno;
	if (madvise(p, len, MADV_NOHUGEPAGE) != 0) {
		int e = errno;
		munmap(p, len);
		return e;
	}
	*out = p;
	return 0;
}

/* Timing brackets: T0 starts the clock, T1 stops it and sets *cost. */
#define T0()                                                                   \
	uint64_t t0_ = 0, t1_ = 0;                                             \
	if ((err = now(&t0_)) != 0)                                            \
		goto out
#define T1(ops)                                                                \
	do {                                                                   \
		if ((err = now(&t1_)) != 0)                                    \
			goto out;                                              \
		*cost = (double)(t1_ - t0_) / (double)(ops);                   \
	} while (0)
/* A libc call that returns -1 and sets errno on failure. */
#define CHECK(call)                                                            \
	do {                                                                   \
		if ((call) == -1) {                                            \
			err = errno;                                           \
			goto out;                                              \
		}                                                              \
	} while (0)

static int op_getpid(long n, double *cost)
{
	int err;
	T0();
	for (long i = 0; i < n; i++)
		CHECK(syscall(SYS_getpid));
	T1(n);
out:
	return err;
}

static int op_clock_gettime(long n, double *cost)
{
	int err;
	struct timespec ts;
	T0();
	for (long i = 0; i < n; i++)
		CHECK(clock_gettime(CLOCK_MONOTONIC, &ts));
	T1(n);
out:
	return err;
}

/* First write to each of n untouched 4 KiB pages. */
static int op_fault_4k(long n, double *cost)
{
	char *p;
	int err = map_small(n * PAGE, &p);
	if (err)
		return err;
	T0();
	for (long i = 0; i < n; i++)
		touch(p + i * PAGE);
	T1(n);
out:
	munmap(p, n * PAGE);
	return err;
}

/* The middle page of three touched pages (THP off): the page that an op
 * drops and writes again, with a mapped neighbour in its 2 MiB range, so
 * that its page table stays (this kernel frees a page table, and then
 * the PMD and PUD tables above it, as soon as it holds no entries; Linux
 * 6.1 does not: sparse_slot_fault_dontneed measures that path). */
static int map_middle(char **page)
{
	char *p;
	int err = map_small(3 * PAGE, &p);
	if (err)
		return err;
	for (int i = 0; i < 3; i++)
		touch(p + i * PAGE);
	*page = p + PAGE;
	return 0;
}

/* `advice` on one touched page (the middle one of three), then a write to it. */
static int advise_then_touch(int advice, long n, double *cost)
{
	char *p;
	int err = map_middle(&p);
	if (err)
		return err;
	T0();
	for (long i = 0; i < n; i++) {
		CHECK(madvise(p, PAGE, advice));
		touch(p);
	}
	T1(n);
out:
	munmap(p - PAGE, 3 * PAGE);
	return err;
}

/* MADV_DONTNEED one touched page, then write it again (a new fault). */
static int op_dontneed_refault_4k(long n, double *cost)
{
	return advise_then_touch(MADV_DONTNEED, n, cost);
}

/* One munmap of n touched pages; the cost is per page. */
static int op_munmap_touched(long n, double *cost)
{
	char *p;
	int err = map_small(n * PAGE, &p);
	if (err)
		return err;
	for (long i = 0; i < n; i++)
		touch(p + i * PAGE);
	T0();
	CHECK(munmap(p, n * PAGE));
	T1(n);
	return 0;
out:
	munmap(p, n * PAGE);
	return err;
}

/* A one-page hole between two touched read-only pages [a][hole][b]: the
 * hole shares its 2 MiB range, so its page table, with a or b, and a 4 KiB
 * mmap lands in it when the three pages were placed at the top of the
 * mmap area (both kernels allocate top-down; checked here). Without the
 * neighbours, a lone page's page tables are allocated and freed with it
 * on Linux, whose placement of that page relative to other mappings
 * changes with address-space randomisation from boot to boot. The
 * neighbours are read-only so that the new mapping merges with neither. */
static int make_hole(char **hole)
{
	char *a = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (a == MAP_FAILED)
		return errno;
	int err = 0;
	touch(a);
	touch(a + 2 * PAGE);
	if (mprotect(a, 3 * PAGE, PROT_READ) != 0 || munmap(a + PAGE, PAGE) != 0) {
		err = errno;
		goto fail;
	}
	char *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		err = errno;
		goto fail;
	}
	munmap(p, PAGE);
	if (p != a + PAGE) {
		err = E_LAYOUT;
		goto fail;
	}
	*hole = p;
	return 0;
fail:
	munmap(a, 3 * PAGE);
	return err;
}

static void unmake_hole(char *hole)
{
	munmap(hole - PAGE, 3 * PAGE);
}

/* mmap (+ one write if `write`) + munmap of 4 KiB, in the hole of make_hole. */
static inline int mmap_munmap_in_hole(int write, long n, double *cost)
{
	char *hole = NULL;
	int err = make_hole(&hole);
	if (err)
		return err;
	T0();
	for (long i = 0; i < n; i++) {
		char *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			err = errno;
			goto out;
		}
		if (write)
			touch(p);
		CHECK(munmap(p, PAGE));
	}
	T1(n);
out:
	unmake_hole(hole);
	return err;
}

/* mmap + munmap of 4 KiB, untouched. */
static int op_mmap_munmap_4k(long n, double *cost)
{
	return mmap_munmap_in_hole(0, n, cost);
}

/* mmap + one write + munmap of 4 KiB. */
static int op_mmap_write_munmap_4k(long n, double *cost)
{
	return mmap_munmap_in_hole(1, n, cost);
}

/* mprotect the middle page of a touched 64-page RW mapping to R (the VMA
 * splits in three) and back to RW (they merge again): one pair per op. */
static int op_mprotect_split_merge(long n, double *cost)
{
	const size_t len = 64 * PAGE;
	char *p;
	int err = map_small(len, &p);
	if (err)
		return err;
	for (size_t i = 0; i < len; i += PAGE)
		touch(p + i);
	char *mid = p + 32 * PAGE;
	T0();
	for (long i = 0; i < n; i++) {
		CHECK(mprotect(mid, PAGE, PROT_READ));
		CHECK(mprotect(mid, PAGE, PROT_READ | PROT_WRITE));
	}
	T1(n);
out:
	munmap(p, len);
	return err;
}

/* brk is not musl's brk() (which always fails): the raw system call, which
 * returns the new break, or the old one if it could not move. */
static uintptr_t sys_brk(uintptr_t addr)
{
	return (uintptr_t)syscall(SYS_brk, addr);
}

/* brk up one page, write it, brk back down. A first, permanent page of
 * heap (two if the next page would start a new 2 MiB range) makes each
 * step grow and shrink an existing heap VMA whose page table stays. */
static int op_brk_write_shrink(long n, double *cost)
{
	int err;
	uintptr_t start = sys_brk(0);
	uintptr_t base = (start + PAGE - 1) & ~(PAGE - 1);
	uintptr_t top = base + PAGE;
	if ((top & (HPAGE - 1)) == 0)
		top += PAGE;
	if (sys_brk(top) != top)
		return ENOMEM;
	for (uintptr_t a = base; a < top; a += PAGE)
		touch((char *)a);
	T0();
	for (long i = 0; i < n; i++) {
		if (sys_brk(top + PAGE) != top + PAGE) {
			err = ENOMEM;
			goto out;
		}
		touch((char *)top);
		if (sys_brk(top) != top) {
			err = ENOMEM;
			goto out;
		}
	}
	T1(n);
out:
	sys_brk(start);
	return err;
}

/* A sparse 64 GiB MAP_NORESERVE area: each op writes one page in a 2 MiB
 * slot never used before (new page table, possibly a new PMD table) and
 * MADV_DONTNEEDs the slot. Slots are used in order across rounds; when the
 * area runs out it is unmapped and mapped afresh between rounds. */
#define SPARSE_LEN (64UL << 30)
static char *sparse_map, *sparse_base;
static long sparse_next;

static int op_sparse_slot(long n, double *cost)
{
	const long nr_slots = SPARSE_LEN / HPAGE;
	int err;
	if (n > nr_slots)
		return EINVAL;
	if (sparse_map && sparse_next + n > nr_slots) {
		munmap(sparse_map, SPARSE_LEN + HPAGE);
		sparse_map = NULL;
	}
	if (!sparse_map) {
		char *p = mmap(NULL, SPARSE_LEN + HPAGE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (p == MAP_FAILED)
			return errno;
		if (madvise(p, SPARSE_LEN + HPAGE, MADV_NOHUGEPAGE) != 0) {
			err = errno;
			munmap(p, SPARSE_LEN + HPAGE);
			return err;
		}
		sparse_map = p;
		sparse_base = (char *)(((uintptr_t)p + HPAGE - 1) & ~(HPAGE - 1));
		sparse_next = 0;
	}
	T0();
	for (long i = 0; i < n; i++) {
		char *slot = sparse_base + (sparse_next + i) * HPAGE;
		touch(slot);
		CHECK(madvise(slot, HPAGE, MADV_DONTNEED));
	}
	T1(n);
out:
	sparse_next += n;
	return err;
}

/* AnonHugePages of /proc/meminfo in kB, or -1. */
static long anon_huge_kb(void)
{
	static char text[8192];
	int fd = open("/proc/meminfo", O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t len = 0, r;
	while (len < (ssize_t)sizeof(text) - 1 && (r = read(fd, text + len, sizeof(text) - 1 - len)) > 0)
		len += r;
	close(fd);
	text[len < 0 ? 0 : len] = 0;
	char *line = strstr(text, "AnonHugePages:");
	return line ? strtol(line + strlen("AnonHugePages:"), NULL, 10) : -1;
}

static long thp_got_kb, thp_want_kb;

/* n huge pages faulted in (MADV_HUGEPAGE, one write per 2 MiB), then one
 * MADV_DONTNEED of 2 MiB per huge page: only the MADV_DONTNEEDs are timed. */
static int op_thp_dontneed(long n, double *cost)
{
	size_t len = n * HPAGE + HPAGE;
	int err;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return errno;
	char *base = (char *)(((uintptr_t)p + HPAGE - 1) & ~(HPAGE - 1));
	CHECK(madvise(base, n * HPAGE, MADV_HUGEPAGE));
	long before = anon_huge_kb();
	for (long i = 0; i < n; i++)
		touch(base + i * HPAGE);
	long after = anon_huge_kb();
	if (before >= 0 && after >= 0 && after - before < n * (long)(HPAGE >> 10)) {
		thp_got_kb = after - before;
		thp_want_kb = n * (HPAGE >> 10);
		err = E_NOTHP;
		goto out;
	}
	T0();
	for (long i = 0; i < n; i++)
		CHECK(madvise(base + i * HPAGE, HPAGE, MADV_DONTNEED));
	T1(n);
out:
	munmap(p, len);
	return err;
}

/* n mmaps of 1 MiB with MAP_POPULATE; the cost is per 4 KiB page. */
#define POPULATE_LEN (1UL << 20)
#define POPULATE_MAX 64
static int op_populate_1m(long n, double *cost)
{
	static char *maps[POPULATE_MAX];
	long mapped = 0;
	int err;
	if (n > POPULATE_MAX)
		return EINVAL;
	T0();
	for (; mapped < n; mapped++) {
		char *p = mmap(NULL, POPULATE_LEN, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		if (p == MAP_FAILED) {
			err = errno;
			goto out;
		}
		maps[mapped] = p;
	}
	T1(n * (POPULATE_LEN / PAGE));
out:
	for (long i = 0; i < mapped; i++)
		munmap(maps[i], POPULATE_LEN);
	return err;
}

/* MADV_FREE a touched page, then write it again (reuse). */
static int op_madv_free_reuse(long n, double *cost)
{
	return advise_then_touch(MADV_FREE, n, cost);
}

/* open + close of this program's file. */
static int op_open_close(long n, double *cost)
{
	int err;
	T0();
	for (long i = 0; i < n; i++) {
		int fd;
		CHECK(fd = open(self_path, O_RDONLY));
		CHECK(close(fd));
	}
	T1(n);
out:
	return err;
}

/* open + read of its first 4 KiB + close (a fresh descriptor each time:
 * the open and close costs are part of the row; pread_4k is the read alone). */
static int op_open_read_4k_close(long n, double *cost)
{
	int err;
	T0();
	for (long i = 0; i < n; i++) {
		int fd;
		ssize_t r;
		CHECK(fd = open(self_path, O_RDONLY));
		CHECK(r = read(fd, buf, PAGE));
		CHECK(close(fd));
		if (r != (ssize_t)PAGE) {
			err = E_SHORT;
			goto out;
		}
	}
	T1(n);
out:
	return err;
}

/* pread of the first 4 KiB of an open file. */
static int op_pread_4k(long n, double *cost)
{
	int err, fd = open(self_path, O_RDONLY);
	if (fd < 0)
		return errno;
	T0();
	for (long i = 0; i < n; i++) {
		ssize_t r;
		CHECK(r = pread(fd, buf, PAGE, 0));
		if (r != (ssize_t)PAGE) {
			err = E_SHORT;
			goto out;
		}
	}
	T1(n);
out:
	close(fd);
	return err;
}

struct op {
	const char *name;
	int (*run)(long n, double *cost);
	/* Operations per round: 4096, fewer where one costs more than about
	 * 10,000 instructions (the program also runs in the kernel's demo of
	 * /bin, so a full run should stay within seconds); thp_dontneed and
	 * populate_1m_per_page count huge pages and 1 MiB mappings. */
	long n;
};

static const struct op ops[] = {
	{ "getpid", op_getpid, 4096 },
	{ "clock_gettime", op_clock_gettime, 4096 },
	{ "fault_4k", op_fault_4k, 4096 },
	{ "dontneed_refault_4k", op_dontneed_refault_4k, 1024 },
	{ "munmap_touched_per_page", op_munmap_touched, 4096 },
	{ "mmap_munmap_4k", op_mmap_munmap_4k, 1024 },
	{ "mmap_write_munmap_4k", op_mmap_write_munmap_4k, 1024 },
	{ "mprotect_split_merge", op_mprotect_split_merge, 1024 },
	{ "brk_write_shrink", op_brk_write_shrink, 1024 },
	{ "sparse_slot_fault_dontneed", op_sparse_slot, 1024 },
	{ "thp_dontneed", op_thp_dontneed, 16 },
	{ "populate_1m_per_page", op_populate_1m, 16 },
	{ "madv_free_reuse", op_madv_free_reuse, 4096 },
	{ "open_close", op_open_close, 1024 },
	{ "open_read_4k_close", op_open_read_4k_close, 1024 },
	{ "pread_4k", op_pread_4k, 4096 },
};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Whether NAME is one of the n names. */
static int selected(const char *name, int n, char **names)
{
	for (int i = 0; i < n; i++)
		if (strcmp(name, names[i]) == 0)
			return 1;
	return 0;
}

int main(int argc, char **argv)
{
	long max_n = 0;
	if (argc > 1) {
		char *end;
		max_n = strtol(argv[1], &end, 10);
		if (*end || max_n < 1) {
			fprintf(stderr, "usage: mmbench [MAX_OPS_PER_ROUND [NAME...]]\n");
			return 2;
		}
	}
	for (int i = 2; i < argc; i++) {
		size_t k = 0;
		while (k < sizeof(ops) / sizeof(ops[0]) && strcmp(ops[k].name, argv[i]) != 0)
			k++;
		if (k == sizeof(ops) / sizeof(ops[0])) {
			fprintf(stderr, "mmbench: no operation named %s\n", argv[i]);
			return 2;
		}
	}
	if (argc > 0 && argv[0][0] == '/')
		self_path = argv[0];
	int errors = 0;
	for (size_t k = 0; k < sizeof(ops) / sizeof(ops[0]); k++) {
		const struct op *op = &ops[k];
		if (argc > 2 && !selected(op->name, argc - 2, argv + 2))
			continue;
		long n = max_n && op->n > max_n ? max_n : op->n;
		double costs[ROUNDS], warm;
		int err = op->run(n < WARMUP ? n : WARMUP, &warm);
		for (int r = 0; r < ROUNDS && !err; r++)
			err = op->run(n, &costs[r]);
		if (err == 0) {
			qsort(costs, ROUNDS, sizeof(costs[0]), cmp_double);
			printf("mmbench: %s: %.0f\n", op->name, costs[ROUNDS / 2]);
		} else if (err == ENOSYS) {
			printf("mmbench: %s: unsupported\n", op->name);
		} else if (err == E_NOTHP) {
			printf("mmbench: %s: no-thp (AnonHugePages +%ld kB of %ld kB)\n", op->name, thp_got_kb, thp_want_kb);
		} else if (err == E_SHORT) {
			printf("mmbench: %s: error short read\n", op->name);
			errors++;
		} else if (err == E_LAYOUT) {
			printf("mmbench: %s: error layout (the mapping did not land in the prepared hole)\n", op->name);
			errors++;
		} else {
			printf("mmbench: %s: error %d\n", op->name, err);
			errors++;
		}
		fflush(stdout);
	}
	printf("mmbench: done\n");
	return errors ? 1 : 0;
}
