/* recipe-emit.c — writes what the key table describes: a recipe's canonical YAML (every key, in
 * table order, one spelling per value, so equal recipes give equal bytes and equal hashes) and
 * the markdown reference docs/recipes.md. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "recipe-impl.h"

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    MT_ASSERT(n >= 0);
    if (b->n + (size_t)n + 1 > b->cap) {
        while (b->n + (size_t)n + 1 > b->cap) b->cap = b->cap ? 2 * b->cap : 4096;
        b->p = mt_xrealloc(b->p, b->cap);
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

/* ---- canonical YAML ---- */

/* Plain only when no YAML reader could take it for anything but this string: a conservative
 * alphabet, a letter, '_' or '/' first, and not a word YAML 1.1 or 1.2 gives a meaning. */
static bool plain_ok(const char *s) {
    if (!*s) return false;
    char c0 = s[0];
    if (!((c0 >= 'a' && c0 <= 'z') || (c0 >= 'A' && c0 <= 'Z') || c0 == '_' || c0 == '/')) return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              c == '/' || c == '-' || c == '+'))
            return false;
    }
    bool b;
    if (mt_rscalar_is_null(s) || mt_rscalar_bool(s, &b)) return false;
    static const char *const yaml11[] = {"yes", "no", "on", "off", "y", "n", "auto"};
    for (size_t i = 0; i < sizeof yaml11 / sizeof yaml11[0]; i++)
        if (!strcasecmp(s, yaml11[i])) return false;
    return true;
}

static void emit_string(sbuf *b, const char *s) {
    if (plain_ok(s)) {
        sb_add(b, "%s", s);
        return;
    }
    sb_add(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': sb_add(b, "\\\""); break;
        case '\\': sb_add(b, "\\\\"); break;
        case '\n': sb_add(b, "\\n"); break;
        case '\t': sb_add(b, "\\t"); break;
        case '\r': sb_add(b, "\\r"); break;
        default:
            if (*p < 0x20 || *p == 0x7f)
                sb_add(b, "\\x%02x", *p);
            else
                sb_add(b, "%c", *p);
        }
    }
    sb_add(b, "\"");
}

/* The shortest decimal that reads back as the same double. An exponent gets a '.' in its
 * mantissa ("1.0e-08"): YAML 1.1 readers such as PyYAML take "1e-08" for a string. */
static void emit_double(sbuf *b, double v) {
    char buf[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    char *e = strchr(buf, 'e');
    if (e && !memchr(buf, '.', (size_t)(e - buf)))
        sb_add(b, "%.*s.0%s", (int)(e - buf), buf, e);
    else
        sb_add(b, "%s", buf);
}

static void emit_value(sbuf *b, const mt_rkey *k, const mt_recipe *r) {
    const void *f = (const char *)r + k->offset;
    switch (k->type) {
    case MT_RKEY_STRING:
    case MT_RKEY_PATH: {
        const char *s = *(char *const *)f;
        if (s)
            emit_string(b, s);
        else
            sb_add(b, "null");
        break;
    }
    case MT_RKEY_PATHS:
    case MT_RKEY_NAMES: {
        const mt_recipe_list *l = f;
        sb_add(b, "[");
        for (size_t i = 0; i < l->n; i++) {
            if (i) sb_add(b, ", ");
            emit_string(b, l->items[i]);
        }
        sb_add(b, "]");
        break;
    }
    case MT_RKEY_INT: {
        int v = *(const int *)f;
        if ((k->flags & MT_RKEY_NULLABLE) && v == MT_RECIPE_UNSET)
            sb_add(b, "null");
        else
            sb_add(b, "%d", v);
        break;
    }
    case MT_RKEY_FLOAT:
    case MT_RKEY_AUTO_FLOAT: {
        double v = *(const double *)f;
        if ((k->flags & MT_RKEY_NULLABLE) && v == MT_RECIPE_UNSET)
            sb_add(b, "null");
        else if (k->type == MT_RKEY_AUTO_FLOAT && v == MT_RECIPE_AUTO)
            sb_add(b, "auto");
        else if ((k->flags & MT_RKEY_OFF) && v == 0)
            sb_add(b, "off");
        else
            emit_double(b, v);
        break;
    }
    case MT_RKEY_BOOL: sb_add(b, "%s", *(const bool *)f ? "true" : "false"); break;
    case MT_RKEY_ENUM: sb_add(b, "%s", k->names[*(const int *)f]); break;
    case MT_RKEY_INT_MAP:
    case MT_RKEY_FLOAT_MAP: {
        const mt_recipe_map *m = f;
        sb_add(b, "{");
        for (size_t i = 0; i < m->n; i++) {
            if (i) sb_add(b, ", ");
            emit_string(b, m->patterns[i]);
            sb_add(b, ": ");
            emit_double(b, m->values[i]);
        }
        sb_add(b, "}");
        break;
    }
    case MT_RKEY_FLOATS: {
        const mt_recipe_numbers *l = f;
        sb_add(b, "[");
        for (size_t i = 0; i < l->n; i++) {
            if (i) sb_add(b, ", ");
            emit_double(b, l->values[i]);
        }
        sb_add(b, "]");
        break;
    }
    }
}

char *mt_recipe_dump_yaml(const mt_recipe *r, size_t *len) {
    sbuf b = {0};
    sb_add(&b, "# moetune recipe, canonical form: every key with its effective value\n");
    for (size_t s = 0; s < mt_recipe_n_sections; s++) {
        const char *sec = mt_recipe_sections[s].name;
        bool header = !*sec;
        for (size_t i = 0; i < mt_recipe_n_keys; i++) {
            const mt_rkey *k = &mt_recipe_keys[i];
            char ksec[32];
            mt_rkey_section(k, ksec, sizeof ksec);
            /* keys that do not apply (LoRA keys of a full fine-tune, DPO's keys of an SFT run)
             * would be refused on re-load; a section with none of its keys is left out */
            if (strcmp(ksec, sec) || !mt_rkey_applies(k, r)) continue;
            if (!header) {
                sb_add(&b, "%s:\n", sec);
                header = true;
            }
            sb_add(&b, "%s%s: ", *sec ? "  " : "", mt_rkey_leaf(k));
            emit_value(&b, k, r);
            sb_add(&b, "\n");
        }
    }
    if (len) *len = b.n;
    return b.p;
}

void mt_recipe_hash(const mt_recipe *r, char out[65]) {
    size_t n;
    char *yaml = mt_recipe_dump_yaml(r, &n);
    mt_sha256_hex(yaml, n, out);
    free(yaml);
}

/* ---- docs/recipes.md ---- */

static const char docs_intro[] =
    "# Recipe reference\n"
    "\n"
    "<!-- Generated by `moetune recipe docs` from the key table in finetune/recipe-schema.c. Edit the\n"
    "     table, then regenerate: `moetune recipe docs > docs/recipes.md`. A test fails when they differ. -->\n"
    "\n"
    "A recipe is one YAML file that says everything a training run needs. `moetune train RECIPE.yaml`\n"
    "runs it; `moetune recipe check RECIPE.yaml` only validates it and prints the effective recipe:\n"
    "every key below with the value the run would use. Ready recipes are in `recipes/`.\n"
    "\n"
    "A minimal recipe names the model and the data; everything else has a default:\n"
    "\n"
    "```yaml\n"
    "model:\n"
    "  path: ../models/tiny-base\n"
    "data:\n"
    "  train: ../data/legal.jsonl\n"
    "train:\n"
    "  steps: 200\n"
    "```\n"
    "\n"
    "## Rules\n"
    "\n"
    "- **Keys.** Only the keys listed below. An unknown key is an error that names the nearest valid\n"
    "  one, also when the name is another tool's (`learning_rate` → `lr`, `lora_alpha` → `alpha`) or\n"
    "  the key sits in the wrong section (`lr belongs under train:`). A key given twice is an error.\n"
    "- **Values.** Integers (`1e4` is read as 10000), numbers (`3e-4`), booleans (`true` or `false`\n"
    "  only: YAML 1.1's `yes`/`no`/`on`/`off` are refused rather than guessed), strings, lists\n"
    "  (block or `[a, b]`; a single value stands for a one-item list) and maps. Quoted scalars are\n"
    "  read like plain ones. `null`, `~` or an empty value means \"not given\": the default, an\n"
    "  empty list or map, or, where the key allows null, no value. Out-of-range values are errors\n"
    "  that show the range: `[0, 1)` includes 0 and excludes 1.\n"
    "- **Paths.** A relative path resolves against the folder that holds the recipe file, not the\n"
    "  current folder, so a recipe means the same wherever it is run from; `~/` resolves against\n"
    "  `$HOME`; a `--set` path resolves against the current folder. The effective recipe shows\n"
    "  every path absolute.\n"
    "- **Keys that depend on each other.** Give `train.steps` or `train.epochs`, not both (neither:\n"
    "  one epoch); `train.warmup_steps` or `train.warmup_ratio`, not both, and warmup_steps below\n"
    "  steps; `data.eval_split` only when `data.eval` is empty; no file in both `data.train` and\n"
    "  `data.eval`. A key marked *only when `adapter.type` is `lora`* is an error in a full\n"
    "  fine-tune.\n"
    "- **Overrides.** `moetune train` and `moetune recipe check` take `--set KEY=VALUE`, repeatable,\n"
    "  applied after the file in order. VALUE is YAML: `--set train.lr=3e-4`,\n"
    "  `--set adapter.targets=[q_proj,v_proj]`, `--set train={steps: 10, lr: 1e-3}`, and an empty\n"
    "  value is null (`--set data.eval=` clears the list). Overrides are validated like the file;\n"
    "  their errors read `--set train.lr: ...`.\n"
    "- **Errors.** Every problem found is reported, one per line, as `file:line:column: key: problem`,\n"
    "  for example `recipes/legal.yaml:12:5: train.learnig_rate: unknown key (did you mean 'lr'?)`.\n"
    "  `moetune recipe check` exits 0 when the recipe is valid and 2 when it is not.\n"
    "- **Files on disk.** `moetune recipe check` checks types, ranges and the rules above without\n"
    "  opening the model or the data, so a recipe can be checked on a machine that lacks them (CI).\n"
    "  With `--strict` it also requires `model.path` to hold config.json, `model.tokenizer` to hold\n"
    "  tokenizer.json and every data path to exist, as a run does.\n"
    "- **Canonical form and hash.** The effective recipe is printed in a canonical form: every key,\n"
    "  in the order below, one spelling per value. The run store keeps it with its SHA-256, so two\n"
    "  runs with the same hash were configured identically. As paths are absolute in it, the hash\n"
    "  also covers where the model, the data and the outputs are.\n";

static void md_escape(sbuf *b, const char *s) {
    for (const char *p = s; *p; p++) {
        if (*p == '|')
            sb_add(b, "\\|");
        else
            sb_add(b, "%c", *p);
    }
}

static void md_type(sbuf *b, const mt_rkey *k) {
    char lo[32], hi[32];
    snprintf(lo, sizeof lo, k->min == floor(k->min) && fabs(k->min) < 1e15 ? "%.0f" : "%g", k->min);
    snprintf(hi, sizeof hi, k->max == floor(k->max) && fabs(k->max) < 1e15 ? "%.0f" : "%g", k->max);
    char range[96];
    snprintf(range, sizeof range, "%c%s, %s%c", (k->flags & MT_RKEY_MIN_OPEN) ? '(' : '[', lo, hi,
             (k->flags & MT_RKEY_MAX_OPEN) ? ')' : ']');
    switch (k->type) {
    case MT_RKEY_STRING: sb_add(b, "string"); break;
    case MT_RKEY_PATH: sb_add(b, "path"); break;
    case MT_RKEY_PATHS: sb_add(b, "path or list of paths"); break;
    case MT_RKEY_NAMES: sb_add(b, "name or list of names"); break;
    case MT_RKEY_INT: sb_add(b, "integer in %s", range); break;
    case MT_RKEY_FLOAT: sb_add(b, "number in %s", range); break;
    case MT_RKEY_AUTO_FLOAT:
        sb_add(b, "%s`auto` or number in %s", (k->flags & MT_RKEY_OFF) ? "`off`, " : "", range);
        break;
    case MT_RKEY_BOOL: sb_add(b, "boolean"); break;
    case MT_RKEY_ENUM:
        for (size_t i = 0; k->names[i]; i++) sb_add(b, "%s`%s`", i ? ", " : "", k->names[i]);
        break;
    case MT_RKEY_INT_MAP: sb_add(b, "map: pattern → integer in %s", range); break;
    case MT_RKEY_FLOAT_MAP: sb_add(b, "map: pattern → number in %s", range); break;
    case MT_RKEY_FLOATS: sb_add(b, "number or list of numbers in %s", range); break;
    }
    if (k->flags & MT_RKEY_NULLABLE) sb_add(b, ", or null");
}

char *mt_recipe_docs_markdown(size_t *len) {
    sbuf b = {0};
    sb_add(&b, "%s", docs_intro);
    sb_add(&b, "\n## Keys\n");
    for (size_t s = 0; s < mt_recipe_n_sections; s++) {
        const char *sec = mt_recipe_sections[s].name;
        if (*sec)
            sb_add(&b, "\n### `%s`\n\n%s\n\n", sec, mt_recipe_sections[s].doc);
        else
            sb_add(&b, "\n### Top level\n\n%s\n\n", mt_recipe_sections[s].doc);
        sb_add(&b, "| key | type | default | meaning |\n|---|---|---|---|\n");
        for (size_t i = 0; i < mt_recipe_n_keys; i++) {
            const mt_rkey *k = &mt_recipe_keys[i];
            char ksec[32];
            mt_rkey_section(k, ksec, sizeof ksec);
            if (strcmp(ksec, sec)) continue;
            sb_add(&b, "| `%s` | ", k->path);
            md_type(&b, k);
            sb_add(&b, " | ");
            if (k->flags & MT_RKEY_REQUIRED)
                sb_add(&b, "required");
            else if (k->def_doc)
                md_escape(&b, k->def_doc);
            else
                sb_add(&b, "`%s`", k->def);
            sb_add(&b, " | ");
            md_escape(&b, k->doc);
            if (k->only_if) {
                const char *eq = strchr(k->only_if, '=');
                sb_add(&b, " *Only when `%.*s` is `%s`.*", (int)(eq - k->only_if), k->only_if, eq + 1);
            }
            sb_add(&b, " |\n");
        }
    }
    if (len) *len = b.n;
    return b.p;
}
