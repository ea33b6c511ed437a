/* recipe-impl.h — the recipe key table's types, shared by the loader (recipe.c), the table
 * itself (recipe-schema.c) and the writers of the canonical dump and the docs (recipe-emit.c).
 * Private to finetune/. */
#ifndef MT_RECIPE_IMPL_H
#define MT_RECIPE_IMPL_H

#include <stdbool.h>
#include <stddef.h>

#include "finetune.h"

typedef enum mt_rkey_type {
    MT_RKEY_STRING,     /* char *                                             */
    MT_RKEY_PATH,       /* char *, made absolute                              */
    MT_RKEY_PATHS,      /* mt_recipe_list of absolute paths; a scalar is one  */
    MT_RKEY_NAMES,      /* mt_recipe_list of names/globs/regexes; a scalar is one */
    MT_RKEY_INT,        /* int                                                */
    MT_RKEY_FLOAT,      /* double                                             */
    MT_RKEY_AUTO_FLOAT, /* double, MT_RECIPE_AUTO for "auto"                  */
    MT_RKEY_BOOL,       /* bool                                               */
    MT_RKEY_ENUM,       /* an enum field, sizeof(int); value = index in names */
    MT_RKEY_INT_MAP,    /* mt_recipe_map with whole-number values             */
    MT_RKEY_FLOAT_MAP,  /* mt_recipe_map                                      */
    MT_RKEY_FLOATS      /* mt_recipe_numbers; a scalar is one                 */
} mt_rkey_type;

enum {
    MT_RKEY_NULLABLE = 1u << 0, /* null allowed: MT_RECIPE_UNSET for numbers            */
    MT_RKEY_REQUIRED = 1u << 1, /* no default: a recipe must give it                     */
    MT_RKEY_MIN_OPEN = 1u << 2, /* the range excludes min                                */
    MT_RKEY_MAX_OPEN = 1u << 3, /* the range excludes max                                */
    MT_RKEY_OFF = 1u << 4,      /* AUTO_FLOAT that also takes `off`, stored as 0         */
};

/* Extra check of one string value (a list item, a map pattern, a name); writes why it is
 * wrong into `why` and returns false. */
typedef bool (*mt_rkey_check_fn)(const char *value, char *why, size_t cap);

typedef struct mt_rkey {
    const char *path;   /* dotted, "train.lr"; top-level keys have no dot */
    mt_rkey_type type;
    size_t offset;      /* of the field in mt_recipe */
    /* The default as YAML text, parsed by the same code as the file; NULL when the default is
     * derived from other keys or the key is required (def_doc then says what it is). */
    const char *def;
    const char *def_doc;
    double min, max;           /* numeric range (for maps: of the values) */
    unsigned flags;
    const char *const *names;  /* MT_RKEY_ENUM: value names, NULL-terminated */
    const char *only_if;       /* "adapter.type=lora" or "method=dpo|simpo": the key may be set only then */
    mt_rkey_check_fn check;
    const char *aliases;       /* space-separated names other tools use, for suggestions */
    const char *doc;           /* one line for docs/recipes.md */
} mt_rkey;

typedef struct mt_rsection {
    const char *name; /* "" for the top-level keys */
    const char *doc;
} mt_rsection;

extern const mt_rkey mt_recipe_keys[];
extern const size_t mt_recipe_n_keys;
extern const mt_rsection mt_recipe_sections[];
extern const size_t mt_recipe_n_sections;

/* "sft", "dpo", ... as recipes and the store spell them. */
const char *mt_recipe_method_name(mt_recipe_method m);
/* "train.lr" → "train" (into buf), "name" → "" */
void mt_rkey_section(const mt_rkey *k, char *buf, size_t cap);
/* "train.lr" → "lr" */
const char *mt_rkey_leaf(const mt_rkey *k);
/* Whether the key's only_if condition holds for this recipe (true when it has none). */
bool mt_rkey_applies(const mt_rkey *k, const mt_recipe *r);
/* The key by dotted path, or NULL. */
const mt_rkey *mt_rkey_find(const char *path);

/* Strictness shared by the loader and the dump: how a scalar's text reads as each type. The
 * dump quotes a string whenever one of these would take it for something else. */
bool mt_rscalar_is_null(const char *s);
bool mt_rscalar_bool(const char *s, bool *out);
bool mt_rscalar_float(const char *s, double *out);

#endif
