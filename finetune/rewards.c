/* rewards.c — reward.rules entries of a recipe into rl/'s rule rewards. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rewards-impl.h"

bool mt_reward_rule_spec_parse(const char *spec, mt_reward_rule *out, char *why, size_t cap) {
    memset(out, 0, sizeof *out);
    out->weight = 1.0;
    out->name = spec;
    if (!strcmp(spec, "exact") || !strcmp(spec, "contains")) {
        out->kind = spec[0] == 'e' ? MT_RULE_EXACT : MT_RULE_CONTAINS;
        return true;
    }
    const char *colon = strchr(spec, ':');
    size_t head = colon ? (size_t)(colon - spec) : strlen(spec);
    const char *arg = colon ? colon + 1 : NULL;
    if (arg && head == 5 && !strncmp(spec, "exact", 5)) {
        out->kind = MT_RULE_EXACT;
    } else if (arg && head == 8 && !strncmp(spec, "contains", 8)) {
        out->kind = MT_RULE_CONTAINS;
    } else if (arg && head == 5 && !strncmp(spec, "regex", 5)) {
        out->kind = MT_RULE_REGEX;
    } else if (arg && head == 6 && !strncmp(spec, "length", 6)) {
        char *end;
        errno = 0;
        unsigned long long lo = strtoull(arg, &end, 10);
        if (end == arg || *end != '-' || errno) {
            snprintf(why, cap, "'%s': length takes MIN-MAX characters, e.g. length:10-200", spec);
            return false;
        }
        const char *hi_s = end + 1;
        unsigned long long hi = strtoull(hi_s, &end, 10);
        if (end == hi_s || *end || errno || hi < lo) {
            snprintf(why, cap, "'%s': length takes MIN-MAX characters with MIN <= MAX, e.g. length:10-200", spec);
            return false;
        }
        out->kind = MT_RULE_LENGTH;
        out->min_chars = (size_t)lo;
        out->max_chars = (size_t)hi;
        return true;
    } else {
        snprintf(why, cap,
                 "'%s': a rule is exact, contains, exact:TEXT, contains:TEXT, regex:PATTERN or length:MIN-MAX", spec);
        return false;
    }
    if (!*arg) {
        snprintf(why, cap, "'%s': nothing after ':'", spec);
        return false;
    }
    out->target = arg;
    return true;
}
