/* rules.c — rule rewards for GRPO written in a recipe: exact match, contains, a PCRE2 regex,
 * length bounds, each scoring 0 or 1, combined as a weighted sum. Regexes are compiled once,
 * when the rules are, so scoring a rollout batch never compiles. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <ctype.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#include "rl-impl.h"

struct mt_reward_rules {
    size_t n;
    mt_reward_rule *rules;  /* [n], strings owned */
    pcre2_code **codes;     /* [n], NULL except for regex rules */
    pcre2_match_data *md;   /* one match block reused by every regex (a handle is single-threaded) */
};

static const char *kind_name(mt_reward_rule_kind k) {
    switch (k) {
    case MT_RULE_EXACT: return "exact_match";
    case MT_RULE_CONTAINS: return "contains";
    case MT_RULE_REGEX: return "regex";
    case MT_RULE_LENGTH: return "length";
    }
    return "unknown";
}

void mt_reward_rules_free(mt_reward_rules *r) {
    if (!r) return;
    for (size_t i = 0; i < r->n; i++) {
        free((char *)r->rules[i].target);
        free((char *)r->rules[i].name);
        pcre2_code_free(r->codes[i]);
    }
    pcre2_match_data_free(r->md);
    free(r->rules);
    free(r->codes);
    free(r);
}

mt_status mt_reward_rules_compile(const mt_reward_rule *rules, size_t n, mt_reward_rules **out, mt_error *err) {
    *out = NULL;
    if (n == 0) return mt_error_set(err, MT_ERR_INVALID, "reward rules: none given");
    mt_reward_rules *r = mt_xcalloc(1, sizeof *r);
    r->rules = mt_xcalloc(n, sizeof *r->rules);
    r->codes = mt_xcalloc(n, sizeof *r->codes);
    mt_status st = MT_OK;
    for (size_t i = 0; i < n && st == MT_OK; i++) {
        const mt_reward_rule *q = &rules[i];
        mt_reward_rule *d = &r->rules[i];
        *d = *q;
        d->target = q->target ? mt_xstrdup(q->target) : NULL;
        d->name = mt_xstrdup(q->name ? q->name : kind_name(q->kind));
        r->n = i + 1;
        if (!isfinite(q->weight)) {
            st = mt_error_set(err, MT_ERR_INVALID, "reward rule %zu (%s): weight is not finite", i, d->name);
        } else if (q->kind == MT_RULE_REGEX) {
            if (!q->target) {
                st = mt_error_set(err, MT_ERR_INVALID, "reward rule %zu (%s): a regex rule needs a pattern", i, d->name);
                break;
            }
            int code;
            PCRE2_SIZE off;
            r->codes[i] = pcre2_compile((PCRE2_SPTR)q->target, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code,
                                        &off, NULL);
            if (!r->codes[i]) {
                PCRE2_UCHAR msg[256];
                pcre2_get_error_message(code, msg, sizeof msg);
                st = mt_error_set(err, MT_ERR_INVALID, "reward rule %zu (%s): regex \"%s\" at offset %zu: %s", i,
                                  d->name, q->target, (size_t)off, (const char *)msg);
            }
        } else if (q->kind == MT_RULE_LENGTH) {
            if (q->min_chars > q->max_chars)
                st = mt_error_set(err, MT_ERR_INVALID, "reward rule %zu (%s): min_chars %zu > max_chars %zu", i,
                                  d->name, q->min_chars, q->max_chars);
        } else if (q->kind != MT_RULE_EXACT && q->kind != MT_RULE_CONTAINS) {
            st = mt_error_set(err, MT_ERR_INVALID, "reward rule %zu: unknown kind %d", i, (int)q->kind);
        }
    }
    if (st == MT_OK) {
        r->md = pcre2_match_data_create(1, NULL);
        if (!r->md) st = mt_error_set(err, MT_ERR_NOMEM, "reward rules: no memory for a PCRE2 match block");
    }
    if (st != MT_OK) {
        mt_reward_rules_free(r);
        return st;
    }
    *out = r;
    return MT_OK;
}

size_t mt_reward_rules_count(const mt_reward_rules *r) { return r->n; }
const char *mt_reward_rules_name(const mt_reward_rules *r, size_t i) { return i < r->n ? r->rules[i].name : NULL; }

/* [*b, *e) of s without leading and trailing ASCII white space */
static void trim(const char *s, const char **b, const char **e) {
    *b = s;
    *e = s + strlen(s);
    while (*b < *e && isspace((unsigned char)**b)) (*b)++;
    while (*e > *b && isspace((unsigned char)(*e)[-1])) (*e)--;
}

static size_t utf8_chars(const char *s) {
    size_t n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80; /* count lead bytes, not continuations */
    return n;
}

mt_status mt_reward_rules_score(const mt_reward_rules *r, const char *completion, const char *reference,
                                double *total, double *per_rule, mt_error *err) {
    double sum = 0;
    for (size_t i = 0; i < r->n; i++) {
        const mt_reward_rule *q = &r->rules[i];
        const char *target = q->target ? q->target : reference;
        if ((q->kind == MT_RULE_EXACT || q->kind == MT_RULE_CONTAINS) && !target)
            return mt_error_set(err, MT_ERR_INVALID, "reward rule %zu (%s) compares with the reference answer, "
                                "and this example has none", i, q->name);
        double v = 0;
        switch (q->kind) {
        case MT_RULE_EXACT: {
            const char *cb, *ce, *tb, *te;
            trim(completion, &cb, &ce);
            trim(target, &tb, &te);
            v = ce - cb == te - tb && !memcmp(cb, tb, (size_t)(ce - cb));
            break;
        }
        case MT_RULE_CONTAINS: v = strstr(completion, target) != NULL; break;
        case MT_RULE_REGEX: {
            int rc = pcre2_match(r->codes[i], (PCRE2_SPTR)completion, strlen(completion), 0, 0, r->md, NULL);
            if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
                PCRE2_UCHAR msg[256];
                pcre2_get_error_message(rc, msg, sizeof msg);
                return mt_error_set(err, MT_ERR_INVALID, "reward rule %zu (%s): matching: %s", i, q->name,
                                    (const char *)msg);
            }
            v = rc >= 0;
            break;
        }
        case MT_RULE_LENGTH: {
            size_t len = utf8_chars(completion);
            v = len >= q->min_chars && len <= q->max_chars;
            break;
        }
        }
        if (per_rule) per_rule[i] = v;
        sum += q->weight * v;
    }
    *total = sum;
    return MT_OK;
}
