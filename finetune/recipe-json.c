/* recipe-json.c — the effective recipe as a JSON object, for the run store (whose `runs compare`
 * diffs configurations key by key). Built from the canonical YAML so the two never disagree. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "finetune.h"

/* Plain scalars take YAML 1.2 core types (null, booleans, numbers); quoted ones stay strings. */
static cJSON *scalar_to_json(const yaml_event_t *e) {
    const char *v = (const char *)e->data.scalar.value;
    if (e->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
        if (!strcmp(v, "null") || !strcmp(v, "~") || !*v) return cJSON_CreateNull();
        if (!strcmp(v, "true")) return cJSON_CreateTrue();
        if (!strcmp(v, "false")) return cJSON_CreateFalse();
        char *end = NULL;
        double d = strtod(v, &end);
        if (end && end != v && *end == '\0') return cJSON_CreateNumber(d);
    }
    return cJSON_CreateString(v);
}

/* Reads one node starting at the event already in *e. Returns NULL on a parser error. */
static cJSON *read_node(yaml_parser_t *p, yaml_event_t *e) {
    if (e->type == YAML_SCALAR_EVENT) return scalar_to_json(e);
    bool map = e->type == YAML_MAPPING_START_EVENT;
    if (!map && e->type != YAML_SEQUENCE_START_EVENT) return NULL;
    cJSON *out = map ? cJSON_CreateObject() : cJSON_CreateArray();
    for (;;) {
        yaml_event_t k;
        if (!yaml_parser_parse(p, &k)) break;
        if (k.type == YAML_MAPPING_END_EVENT || k.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&k);
            return out;
        }
        if (map) {
            if (k.type != YAML_SCALAR_EVENT) {
                yaml_event_delete(&k);
                break;
            }
            char *key = mt_xstrdup((const char *)k.data.scalar.value);
            yaml_event_delete(&k);
            yaml_event_t v;
            if (!yaml_parser_parse(p, &v)) {
                free(key);
                break;
            }
            cJSON *child = read_node(p, &v);
            yaml_event_delete(&v);
            if (!child) {
                free(key);
                break;
            }
            cJSON_AddItemToObject(out, key, child);
            free(key);
        } else {
            cJSON *child = read_node(p, &k);
            yaml_event_delete(&k);
            if (!child) break;
            cJSON_AddItemToArray(out, child);
        }
    }
    cJSON_Delete(out);
    return NULL;
}

char *mt_recipe_to_json(const mt_recipe *r) {
    size_t len = 0;
    char *yaml = mt_recipe_dump_yaml(r, &len);
    yaml_parser_t p;
    yaml_parser_initialize(&p);
    yaml_parser_set_input_string(&p, (const unsigned char *)yaml, len);
    cJSON *root = NULL;
    yaml_event_t e;
    while (!root && yaml_parser_parse(&p, &e)) {
        yaml_event_type_t t = e.type;
        if (t == YAML_MAPPING_START_EVENT) root = read_node(&p, &e);
        yaml_event_delete(&e);
        if (t == YAML_STREAM_END_EVENT) break;
    }
    yaml_parser_delete(&p);
    free(yaml);
    MT_ASSERT(root != NULL); /* the canonical dump is moetune's own output */
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return json;
}
