/* linux_init: the first process of the Linux peer (`boot --linux`).
 *
 * The runner appends this program to the initramfs as /linux-init and boots
 * Linux with `rdinit=/linux-init ... -- COMMAND...`; Linux hands the words
 * after `--` to init as argv. Each COMMAND is one word, an absolute path and
 * its arguments joined by commas: `/bin/fuzz,7,3000` runs `/bin/fuzz 7 3000`.
 * Linux also puts boot parameters it does not know (words without `=`) into
 * init's argv, before those: words that do not start with `/` are reported
 * and skipped.
 *
 * It mounts /proc, /sys and devtmpfs on /dev, makes the serial console
 * (/dev/console, which is ttyS0 with console=ttyS0) stdin, stdout and stderr,
 * then runs the commands one after another, each with the environment our
 * kernel gives its programs (PATH=/bin HOME=/ TERM=dumb), and waits for each.
 *
 * Output, in the kernel's formats:
 * - one command (the runner's --init PATH): the program's output, then
 *   `init exited with status N` (N = exit status, or 128+signal), as our
 *   kernel prints for its init;
 * - several (the runner's --exec "run PATH ARGS"): before each one
 *   `linux-init: run PATH ARGS`, after it `PATH: exited with status N` or
 *   `PATH: killed by signal S (NAME)` (the line our console's `run` prints),
 *   and at the end `init exited with status N`, N being the first non-zero
 *   status (0 if every command exited 0).
 *
 * Then it powers the machine off (reboot(RB_POWER_OFF)); QEMU exits.
 * Built by boot/build.rs with musl-gcc -static; not part of our kernel's
 * initramfs (its demo runs everything in /bin).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define SEPARATOR ','
#define MAX_ARGS 64

static char *const program_env[] = { "PATH=/bin", "HOME=/", "TERM=dumb", NULL };

/* printf, then flush: the output must be on the console before the next
 * program writes (or before the power-off). */
__attribute__((format(printf, 1, 2))) static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fflush(stdout);
}

static void mount_one(const char *source, const char *target, const char *type)
{
	if (mkdir(target, 0755) != 0 && errno != EEXIST)
		say("linux-init: mkdir %s: %s\n", target, strerror(errno));
	if (mount(source, target, type, 0, NULL) != 0)
		say("linux-init: mount %s: %s\n", target, strerror(errno));
}

static void console_as_stdio(void)
{
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);
	if (fd < 0) {
		/* Keep the fds Linux opened on its own /dev/console. */
		say("linux-init: /dev/console: %s\n", strerror(errno));
		return;
	}
	for (int i = 0; i < 3; i++)
		if (fd != i)
			dup2(fd, i);
	if (fd > 2)
		close(fd);
}

static const char *signal_name(int sig)
{
	switch (sig) {
	case SIGILL: return "SIGILL";
	case SIGTRAP: return "SIGTRAP";
	case SIGBUS: return "SIGBUS";
	case SIGFPE: return "SIGFPE";
	case SIGKILL: return "SIGKILL";
	case SIGSEGV: return "SIGSEGV";
	default: return "?";
	}
}

/* Runs argv[0] with argv and waits; returns the shell code (128+signal if
 * killed), printing the console's status line when `verbose`. */
static int run(char **argv, int verbose)
{
	if (verbose) {
		printf("linux-init: run");
		for (char **a = argv; *a; a++)
			printf(" %s", *a);
		printf("\n");
		fflush(stdout);
	}
	pid_t pid = fork();
	if (pid < 0) {
		say("linux-init: fork: %s\n", strerror(errno));
		return 127;
	}
	if (pid == 0) {
		execve(argv[0], argv, program_env);
		say("linux-init: %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	int status;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR) {
			say("linux-init: waitpid: %s\n", strerror(errno));
			return 127;
		}
	int code;
	if (WIFSIGNALED(status)) {
		code = 128 + WTERMSIG(status);
		if (verbose)
			printf("%s: killed by signal %d (%s)\n", argv[0], WTERMSIG(status), signal_name(WTERMSIG(status)));
	} else {
		code = WEXITSTATUS(status);
		if (verbose)
			printf("%s: exited with status %d\n", argv[0], code);
	}
	fflush(stdout);
	return code;
}

int main(int argc, char **argv)
{
	mount_one("proc", "/proc", "proc");
	mount_one("sysfs", "/sys", "sysfs");
	mount_one("devtmpfs", "/dev", "devtmpfs");
	console_as_stdio();

	int commands = 0;
	for (int i = 1; i < argc; i++) {
		if (argv[i][0] == '/')
			commands++;
		else
			say("linux-init: ignoring unknown boot parameter '%s'\n", argv[i]);
	}
	int result = 0;
	if (commands == 0) {
		say("linux-init: no program given (kernel command line: ... -- PATH[,ARG...])\n");
		result = 127;
	}
	for (int i = 1; i < argc; i++) {
		if (argv[i][0] != '/')
			continue;
		/* PATH,ARG,ARG: split at the commas, in place. */
		char *words[MAX_ARGS + 1];
		int n = 0;
		for (char *w = argv[i]; w && n < MAX_ARGS; n++) {
			words[n] = w;
			w = strchr(w, SEPARATOR);
			if (w)
				*w++ = '\0';
		}
		words[n] = NULL;
		int code = run(words, commands > 1);
		if (result == 0)
			result = code;
	}
	printf("init exited with status %d\n", result);
	fflush(stdout);
	sync();
	reboot(RB_POWER_OFF);
	say("linux-init: reboot: %s\n", strerror(errno));
	return result;
}
