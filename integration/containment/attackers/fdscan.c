/* Attacker: list every fd this process holds and try to use each one against the host.
 * Prints "fd N type target" per fd, "LISTENING N" for a listening socket (and whether accept() got a
 * connection), "PTMX N" for a pty master, then "fds: 0 1 2 ..." and optionally sleeps (argv[1] seconds). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int fds[1024], n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d) { perror("opendir /proc/self/fd"); return 2; }
    int own = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d)) && n < 1024) {
        if (e->d_name[0] == '.') continue;
        int fd = atoi(e->d_name);
        if (fd != own) fds[n++] = fd;
    }
    closedir(d);
    char line[8192] = "fds:";
    for (int i = 0; i < n; i++) {
        int fd = fds[i];
        char path[64], target[512] = "";
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        ssize_t len = readlink(path, target, sizeof target - 1);
        if (len > 0) target[len] = 0;
        printf("fd %d %s\n", fd, target);
        int listening = 0;
        socklen_t sl = sizeof listening;
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &sl) == 0 && listening) {
            int flags = fcntl(fd, F_GETFL);
            fcntl(fd, F_SETFL, flags | O_NONBLOCK);
            int c = accept(fd, NULL, NULL);
            printf("LISTENING %d accept=%s\n", fd, c >= 0 ? "connection" : strerror(errno));
            if (c >= 0) close(c);
        }
        int ptn;
        if (ioctl(fd, TIOCGPTN, &ptn) == 0) printf("PTMX %d pts=%d\n", fd, ptn);
        snprintf(line + strlen(line), sizeof line - strlen(line), " %d", fd);
    }
    printf("%s\n", line);
    fflush(stdout);
    if (argc > 1) sleep(atoi(argv[1]));
    return 0;
}
