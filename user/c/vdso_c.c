/* vdso_c: the vDSO (AT_SYSINFO_EHDR) and the time calls through it.
 *
 * Finds the vDSO in the auxv, looks its functions up like musl's __vdsosym
 * (program headers, dynamic section, DT_HASH symbol count, versions) and
 * checks that they agree with the system calls: clock_gettime through the
 * vDSO and through syscall(SYS_clock_gettime) interleave monotonically,
 * gettimeofday and time agree with them, bad clock ids give EINVAL, and
 * /proc/self/maps shows [vvar] and [vdso] where the auxv says. Addresses and
 * resolutions are INFO lines (system-dependent). */
#include <elf.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define ROUNDS 2000

typedef int (*cgt_fn)(long, struct timespec *);
typedef int (*gtod_fn)(struct timeval *, void *);
typedef long (*time_fn)(long *);

static const Elf64_Ehdr *vdso;

/* musl's __vdsosym, returning NULL where it would. */
static void *vdso_sym(const char *vername, const char *name)
{
	if (!vdso)
		return NULL;
	const char *eh = (const char *)vdso;
	const Elf64_Phdr *ph = (const void *)(eh + vdso->e_phoff);
	const size_t *dynv = NULL;
	size_t base = (size_t)-1;
	for (int i = 0; i < vdso->e_phnum; i++, ph = (const void *)((const char *)ph + vdso->e_phentsize)) {
		if (ph->p_type == PT_LOAD)
			base = (size_t)eh + ph->p_offset - ph->p_vaddr;
		else if (ph->p_type == PT_DYNAMIC)
			dynv = (const void *)(eh + ph->p_offset);
	}
	if (!dynv || base == (size_t)-1)
		return NULL;
	const char *strings = NULL;
	const Elf64_Sym *syms = NULL;
	const uint32_t *hash = NULL;
	const uint16_t *versym = NULL;
	const Elf64_Verdef *verdef = NULL;
	for (size_t i = 0; dynv[i]; i += 2) {
		const void *p = (const void *)(base + dynv[i + 1]);
		switch (dynv[i]) {
		case DT_STRTAB: strings = p; break;
		case DT_SYMTAB: syms = p; break;
		case DT_HASH: hash = p; break;
		case DT_VERSYM: versym = p; break;
		case DT_VERDEF: verdef = p; break;
		}
	}
	if (!strings || !syms || !hash)
		return NULL;
	if (!verdef)
		versym = NULL;
	for (size_t i = 0; i < hash[1]; i++) {
		if (ELF64_ST_TYPE(syms[i].st_info) != STT_FUNC)
			continue;
		if (ELF64_ST_BIND(syms[i].st_info) != STB_GLOBAL)
			continue;
		if (!syms[i].st_shndx || strcmp(name, strings + syms[i].st_name))
			continue;
		if (versym) {
			const Elf64_Verdef *d = verdef;
			int v = versym[i] & 0x7fff, ok = 0;
			for (;;) {
				if (!(d->vd_flags & VER_FLG_BASE) && (d->vd_ndx & 0x7fff) == v) {
					const Elf64_Verdaux *aux = (const void *)((const char *)d + d->vd_aux);
					ok = !strcmp(vername, strings + aux->vda_name);
					break;
				}
				if (!d->vd_next)
					break;
				d = (const void *)((const char *)d + d->vd_next);
			}
			if (!ok)
				continue;
		}
		return (void *)(base + syms[i].st_value);
	}
	return NULL;
}

static uint64_t ns(const struct timespec *t)
{
	return (uint64_t)t->tv_sec * 1000000000u + (uint64_t)t->tv_nsec;
}

static long sys_cgt(long clk, struct timespec *t)
{
	return syscall(SYS_clock_gettime, clk, t);
}

static void auxv(void)
{
	vdso = (const Elf64_Ehdr *)getauxval(AT_SYSINFO_EHDR);
	printf("INFO AT_SYSINFO_EHDR %p\n", (void *)vdso);
	check("auxv_sysinfo_ehdr", vdso != NULL);
	check("vdso_is_elf_dyn", vdso && !memcmp(vdso->e_ident, ELFMAG, SELFMAG) &&
				     vdso->e_ident[EI_CLASS] == ELFCLASS64 && vdso->e_type == ET_DYN &&
				     vdso->e_machine == EM_X86_64);
}

/* vDSO and syscall readings of one clock, alternated, never go back. */
static void interleave(const char *name, long clk, cgt_fn cgt)
{
	char label[64];
	struct timespec t;
	uint64_t last = 0;
	int ok = cgt != NULL, errors = 0;
	for (int i = 0; ok && i < ROUNDS; i++) {
		int r;
		switch (i % 3) {
		case 0: r = cgt(clk, &t); break;
		case 1: r = sys_cgt(clk, &t); break;
		default: r = clock_gettime(clk, &t); break;
		}
		if (r != 0 || t.tv_nsec < 0 || t.tv_nsec >= 1000000000) {
			errors++;
			ok = 0;
		} else if (ns(&t) < last) {
			ok = 0;
			printf("INFO %s: %llu after %llu (round %d)\n", name, (unsigned long long)ns(&t),
			       (unsigned long long)last, i);
		} else {
			last = ns(&t);
		}
	}
	snprintf(label, sizeof label, "%s_vdso_and_syscall_monotonic", name);
	check(label, ok && errors == 0);
}

static void clocks(void)
{
	cgt_fn cgt = vdso_sym("LINUX_2.6", "__vdso_clock_gettime");
	gtod_fn gtod = vdso_sym("LINUX_2.6", "__vdso_gettimeofday");
	time_fn vtime = vdso_sym("LINUX_2.6", "__vdso_time");
	cgt_fn getres = vdso_sym("LINUX_2.6", "__vdso_clock_getres");
	check("vdso_exports_clock_gettime", cgt != NULL);
	check("vdso_exports_gettimeofday", gtod != NULL);
	check("vdso_exports_time", vtime != NULL);
	check("vdso_exports_clock_getres", getres != NULL);
	check("vdso_versions_checked", vdso_sym("LINUX_2.5", "__vdso_clock_gettime") == NULL);
	if (!cgt || !gtod || !vtime || !getres)
		return;

	interleave("monotonic", CLOCK_MONOTONIC, cgt);
	interleave("realtime", CLOCK_REALTIME, cgt);
	interleave("boottime", CLOCK_BOOTTIME, cgt);
	interleave("monotonic_raw", CLOCK_MONOTONIC_RAW, cgt);

	/* The coarse clocks: served, and within a tick (plus slack) of the fine ones. */
	struct timespec a, c, b;
	int ok = 1;
	for (int i = 0; i < 2; i++) {
		long fine = i ? CLOCK_REALTIME : CLOCK_MONOTONIC;
		long coarse = i ? CLOCK_REALTIME_COARSE : CLOCK_MONOTONIC_COARSE;
		ok &= cgt(fine, &a) == 0 && cgt(coarse, &c) == 0 && cgt(fine, &b) == 0;
		ok &= ns(&c) <= ns(&b) && ns(&c) + 100000000 >= ns(&a);
	}
	check("coarse_clocks_close_to_fine", ok);

	/* gettimeofday and time between two CLOCK_REALTIME readings. */
	struct timeval tv, stv;
	long t_vdso, t_sys, t_libc, sys_tloc = 0;
	struct { int minuteswest, dsttime; } tz = { 123, 456 };
	ok = cgt(CLOCK_REALTIME, &a) == 0;
	ok &= gtod(&tv, &tz) == 0;
	ok &= syscall(SYS_gettimeofday, &stv, NULL) == 0;
	t_vdso = vtime(NULL);
	t_sys = syscall(SYS_time, &sys_tloc);
	t_libc = time(NULL);
	ok &= cgt(CLOCK_REALTIME, &b) == 0;
	uint64_t us = (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
	uint64_t sus = (uint64_t)stv.tv_sec * 1000000u + (uint64_t)stv.tv_usec;
	check("gettimeofday_between_realtime_readings",
	      ok && ns(&a) / 1000 <= us && us <= sus && sus <= ns(&b) / 1000 && tv.tv_usec < 1000000);
	check("gettimeofday_timezone_utc", tz.minuteswest == 0 && tz.dsttime == 0);
	/* Linux's time() reads the seconds of the last tick: up to 1 s behind. */
	uint64_t lo = (uint64_t)a.tv_sec - 1, hi = (uint64_t)b.tv_sec;
	check("time_between_realtime_readings", (uint64_t)t_vdso >= lo && (uint64_t)t_vdso <= hi &&
						       (uint64_t)t_sys >= lo && (uint64_t)t_sys <= hi &&
						       (uint64_t)t_libc >= lo && (uint64_t)t_libc <= hi);
	check("time_stores_tloc", sys_tloc == t_sys);

	/* Bad clock ids: EINVAL from the vDSO (its syscall fallback), libc and
	 * the system call alike. */
	long bad[] = { 100, 1000, 0x7fffffff }; /* not 16..23: Linux 6.17+ auxiliary clocks */
	ok = 1;
	for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		int r[5] = { cgt(bad[i], &a), 0, 0, getres(bad[i], &a), 0 };
		r[1] = sys_cgt(bad[i], &a) == -1 ? errno : 0;
		r[2] = clock_gettime(bad[i], &a) == -1 ? errno : 0;
		r[4] = clock_getres(bad[i], &a) == -1 ? errno : 0;
		if (r[0] != -EINVAL || r[1] != EINVAL || r[2] != EINVAL || r[3] != -EINVAL || r[4] != EINVAL) {
			ok = 0;
			printf("INFO clock %ld: vdso %d, syscall errno %d, libc errno %d, vdso getres %d, getres errno %d\n",
			       bad[i], r[0], r[1], r[2], r[3], r[4]);
		}
	}
	check("bad_clock_einval", ok);
	/* A clock the vDSO leaves to the kernel. */
	check("cputime_clock_through_fallback", cgt(CLOCK_PROCESS_CPUTIME_ID, &a) == 0 && a.tv_nsec < 1000000000);
	check_errno("cputime_bad_pointer_efault", clock_gettime(CLOCK_PROCESS_CPUTIME_ID, (void *)8), EFAULT);

	/* Resolutions: 0 s and at most a tick; a null res is allowed. */
	struct timespec r1, r2;
	ok = getres(CLOCK_MONOTONIC, &r1) == 0 && syscall(SYS_clock_getres, CLOCK_MONOTONIC, &r2) == 0;
	ok &= r1.tv_sec == 0 && r1.tv_nsec == r2.tv_nsec && r1.tv_nsec > 0 && r1.tv_nsec <= 10000000;
	ok &= getres(CLOCK_REALTIME, NULL) == 0 && clock_getres(CLOCK_BOOTTIME, NULL) == 0;
	check("clock_getres_vdso_and_syscall_agree", ok);
	printf("INFO resolution CLOCK_MONOTONIC %ld ns\n", r1.tv_nsec);
}

/* The [vvar] and [vdso] lines of /proc/self/maps. */
static void maps(void)
{
	static char buf[16384];
	int fd = open("/proc/self/maps", O_RDONLY);
	long n = 0, r;
	while (fd >= 0 && n < (long)sizeof buf - 1 && (r = read(fd, buf + n, sizeof buf - 1 - n)) > 0)
		n += r;
	if (fd >= 0)
		close(fd);
	buf[n > 0 ? n : 0] = 0;
	int vdso_ok = 0, vvar_ok = 0;
	for (char *line = buf; line && *line;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = 0;
		unsigned long start, end;
		char perms[5];
		if (sscanf(line, "%lx-%lx %4s", &start, &end, perms) == 3) {
			size_t len = strlen(line);
			if (len >= 6 && !strcmp(line + len - 6, "[vdso]")) {
				printf("INFO %s\n", line);
				vdso_ok = start == (unsigned long)vdso && !strcmp(perms, "r-xp");
			}
			if (len >= 6 && !strcmp(line + len - 6, "[vvar]")) {
				printf("INFO %s\n", line);
				vvar_ok = !strcmp(perms, "r--p") && end <= (unsigned long)vdso;
			}
		}
		line = nl ? nl + 1 : NULL;
	}
	check("maps_vdso_at_sysinfo_ehdr", vdso_ok);
	check("maps_vvar_read_only_below_vdso", vvar_ok);
	/* The vDSO's code cannot be made writable or written (no VM_MAYWRITE here,
	 * copy-on-write on Linux: either way the shared page is untouched). */
	int before = vdso ? ((const unsigned char *)vdso)[0] : 0;
	if (vdso && mprotect((void *)vdso, PAGE, PROT_READ | PROT_WRITE) == 0) {
		((volatile unsigned char *)vdso)[0] = 0x7f;
		mprotect((void *)vdso, PAGE, PROT_READ | PROT_EXEC);
	}
	check("vdso_header_intact", vdso && before == 0x7f && !memcmp(vdso->e_ident, ELFMAG, SELFMAG));
}

int main(void)
{
	auxv();
	clocks();
	maps();
	return finish("vdso_c");
}
