/* vgexec.so — LD_PRELOAD shim that runs each webd child role under its own callgrind.
 *
 * Why: webd picks a child's role from argv[0] ("webd: listener", "webd: worker 0"), and
 * valgrind --trace-children=yes replaces a traced child's argv[0] with the executable's
 * path, so every child would start as a daemon. Instead this shim interposes execvp
 * (what Rust's std::process::Command calls after fork): when argv[0] starts with
 * "webd: ", it execs
 *     valgrind --tool=callgrind --callgrind-out-file=$HP_CG_DIR/cg.%p
 *              --log-file=$HP_CG_DIR/valgrind.%p.log "<argv[0]>" argv[1..]
 * with $HP_ROLE_DIR on PATH holding symlinks named "webd: listener" etc. to the webd
 * binary: valgrind finds a slash-less name through PATH and keeps it as the client's
 * argv[0], so the role survives. The pid stays the one webd spawned and logs.
 * Anything else is passed to the real execvp untouched.
 *
 * Build: cc -O2 -shared -fPIC -o vgexec.so vgexec.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*execvp_fn)(const char *, char *const[]);

int execvp(const char *file, char *const argv[]) {
    execvp_fn real = (execvp_fn)dlsym(RTLD_NEXT, "execvp");
    const char *dir = getenv("HP_CG_DIR");
    if (!dir || !argv || !argv[0] || strncmp(argv[0], "webd: ", 6) != 0)
        return real(file, argv);
    static char out[4096], logf[4096];
    snprintf(out, sizeof out, "--callgrind-out-file=%s/cg.%%p", dir);
    snprintf(logf, sizeof logf, "--log-file=%s/valgrind.%%p.log", dir);
    size_t n = 0;
    while (argv[n]) n++;
    /* No malloc between fork and exec: a fixed array. */
    static char *nargv[256];
    if (n + 5 > sizeof nargv / sizeof nargv[0]) return real(file, argv);
    size_t k = 0;
    nargv[k++] = "valgrind";
    nargv[k++] = "--tool=callgrind";
    nargv[k++] = out;
    nargv[k++] = logf;
    for (size_t i = 0; i < n; i++) nargv[k++] = argv[i];
    nargv[k] = NULL;
    return real("valgrind", nargv);
}
