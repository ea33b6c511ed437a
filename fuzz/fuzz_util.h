/* fuzz_util.h — what the file-based fuzz targets share: the test fixtures' folder and a scratch
 * folder of this process, where each input is written as the file the parser under test reads
 * (recipes, JSONL data and adapter folders are read from paths, as a user points moetune). */
#ifndef MT_FUZZ_UTIL_H
#define MT_FUZZ_UTIL_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* MT_FUZZ_FIXTURES, or tests/fixtures beside this source file; rel appended. Static buffer. */
static inline const char *fuzz_fixture(const char *rel) {
    static char path[4096];
    const char *env = getenv("MT_FUZZ_FIXTURES");
    char root[3000];
    if (env) {
        snprintf(root, sizeof root, "%s/..", env); /* the tokenizer target's variable names tokenizers/ */
    } else {
        snprintf(root, sizeof root, "%s", __FILE__);
        char *slash = strrchr(root, '/');
        if (slash) *slash = '\0';
        else snprintf(root, sizeof root, ".");
        strncat(root, "/../tests/fixtures", sizeof root - strlen(root) - 1);
    }
    snprintf(path, sizeof path, "%s/%s", root, rel);
    return path;
}

/* A folder of this process's own, made once and left for the next run to reuse. */
static inline const char *fuzz_scratch(void) {
    static char dir[512];
    if (!dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/moetune-fuzz-%ld", t && *t ? t : "/tmp", (long)getpid());
        if (mkdir(dir, 0700) != 0 && errno != EEXIST) abort();
    }
    return dir;
}

static inline void fuzz_write(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    if (fclose(f) != 0) abort();
}

#endif
