/* fuzz_pairs.c — libFuzzer target for the preference-pair line parser: the input is a JSONL
 * file; every line is parsed, and every accepted pair must hold the parser's promises (non-empty
 * distinct completions, a known form, the hash of its texts) and survive export and re-parse
 * with the same content hash. A refused line must come with a reason. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_line(const char *line, size_t len) {
    mt_pair_parsed p;
    char why[256] = "";
    if (!mt_pairs_parse_line(line, len, &p, why, sizeof why)) {
        if (!why[0] || p.prompt || p.chosen || p.rejected) abort();
        return;
    }
    if (!p.prompt || !p.chosen || !p.rejected || !*p.chosen || !*p.rejected) abort();
    if (!strcmp(p.chosen, p.rejected)) abort();
    if ((unsigned)p.format >= MT_PAIR_FORMAT_COUNT) abort();
    char h[65];
    mt_store_pair_hash(p.prompt, p.chosen, p.rejected, h);
    if (strcmp(h, p.hash)) abort();
    /* export, then parse the export: the same content */
    mt_pair_record r = {.format = p.format, .prompt = p.prompt, .chosen = p.chosen, .rejected = p.rejected,
                        .score = p.score, .source = p.source, .annotator = p.annotator, .label_json = p.label_json};
    char *json = mt_pair_record_json(&r);
    mt_pair_parsed q;
    if (!mt_pairs_parse_line(json, strlen(json), &q, why, sizeof why)) abort();
    if (strcmp(q.hash, p.hash)) abort();
    if (!(isnan(p.score) ? isnan(q.score) : q.score == p.score)) abort();
    free(json);
    mt_pair_parsed_free(&q);
    mt_pair_parsed_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *s = (const char *)data;
    for (size_t at = 0; at <= size;) {
        size_t end = at;
        while (end < size && s[end] != '\n') end++;
        if (end > at) check_line(s + at, end - at);
        at = end + 1;
    }
    return 0;
}
