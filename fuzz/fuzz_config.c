/* fuzz_config.c — libFuzzer target for the config.json parser: the input is the file's text.
 * A config that loads must survive its own round trip: serialised with mt_config_to_json it
 * loads again, and serialising that gives the same text. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/config-impl.h"
#include "model/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mt_config cfg, before;
    memset(&cfg, 0xa5, sizeof cfg);
    before = cfg;
    mt_error err = {0};
    if (mt_config_parse(&cfg, (const char *)data, size, "fuzz/config.json", &err) != MT_OK) {
        /* a failure says why and leaves the caller's config as it was */
        if (!err.msg[0] || memcmp(&cfg, &before, sizeof cfg)) abort();
        return 0;
    }
    int64_t active;
    (void)mt_config_param_count(&cfg, &active);
    (void)mt_config_flops_per_token(&cfg, 1);
    char *json = NULL;
    if (mt_config_to_json(&cfg, &json, &err) != MT_OK) {
        fprintf(stderr, "config loads but does not serialise: %s\n", err.msg);
        abort();
    }
    mt_config again;
    mt_error err2 = {0};
    if (mt_config_parse(&again, json, strlen(json), "fuzz/resaved.json", &err2) != MT_OK) {
        fprintf(stderr, "serialised config does not load: %s\n%s\n", err2.msg, json);
        abort();
    }
    char *json2 = NULL;
    if (mt_config_to_json(&again, &json2, &err2) != MT_OK || strcmp(json, json2)) {
        fprintf(stderr, "round trip changed the config:\n%s\n---\n%s\n", json, json2 ? json2 : err2.msg);
        abort();
    }
    free(json);
    free(json2);
    return 0;
}
