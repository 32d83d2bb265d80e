/* Print "name size mtime_ns mode" for each file argument: busybox stat has no
 * nanosecond mtime, and the fixtures keep the kernel's mtimes to the nanosecond. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

int main(int argc, char **argv)
{
	struct stat st;
	int rc = 0;

	for (int i = 1; i < argc; i++) {
		const char *base = strrchr(argv[i], '/');

		if (stat(argv[i], &st)) {
			perror(argv[i]);
			rc = 1;
			continue;
		}
		printf("%s %lld %lld%09ld %04o\n", base ? base + 1 : argv[i],
		       (long long)st.st_size, (long long)st.st_mtim.tv_sec,
		       st.st_mtim.tv_nsec, st.st_mode & 07777);
	}
	return rc;
}
