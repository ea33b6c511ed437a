/* prompts.c — the prompts file of `moetune generate --prompts`: JSONL objects with a prompt,
 * an optional adapter name and sample count, or plain text lines, as batch inference tools
 * take them. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "finetune.h"

void mt_prompts_free(mt_prompt_item *items, int n) {
    for (int i = 0; items && i < n; i++) {
        free(items[i].text);
        free(items[i].adapter);
    }
    free(items);
}

static mt_status parse_json_line(const char *path, int line, const char *s, mt_prompt_item *it, mt_error *err) {
    cJSON *j = cJSON_Parse(s);
    mt_status st = MT_OK;
    if (!j || !cJSON_IsObject(j)) {
        st = mt_error_set(err, MT_ERR_FORMAT, "%s:%d: not a JSON object", path, line);
        goto done;
    }
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "prompt");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "adapter");
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(j, "n");
    if (!cJSON_IsString(p)) {
        st = mt_error_set(err, MT_ERR_FORMAT, "%s:%d: \"prompt\" must be a string", path, line);
    } else if (a && !cJSON_IsNull(a) && !cJSON_IsString(a)) {
        st = mt_error_set(err, MT_ERR_FORMAT, "%s:%d: \"adapter\" must be a string", path, line);
    } else if (n && (!cJSON_IsNumber(n) || n->valuedouble < 1 || n->valuedouble > 4096 ||
                     n->valuedouble != (double)(int)n->valuedouble)) {
        st = mt_error_set(err, MT_ERR_FORMAT, "%s:%d: \"n\" must be an integer in [1, 4096]", path, line);
    } else {
        it->text = mt_xstrdup(p->valuestring);
        it->adapter = cJSON_IsString(a) ? mt_xstrdup(a->valuestring) : NULL;
        it->n = n ? (int)n->valuedouble : 0;
    }
done:
    cJSON_Delete(j);
    return st;
}

mt_status mt_prompts_load(const char *path, mt_prompt_item **out, int *n, mt_error *err) {
    *out = NULL;
    *n = 0;
    char *data = NULL;
    size_t len = 0;
    mt_status st = mt_read_file(path, &data, &len, err);
    if (st) return st;
    int cap = 16, count = 0;
    mt_prompt_item *items = mt_xcalloc((size_t)cap, sizeof *items);
    int line = 0;
    for (char *s = data; !st && s < data + len;) {
        char *e = memchr(s, '\n', (size_t)(data + len - s));
        if (!e) e = data + len;
        *e = '\0';
        line++;
        if (e > s && e[-1] == '\r') e[-1] = '\0';
        if (*s) {
            if (count == cap) {
                cap *= 2;
                items = mt_xrealloc(items, (size_t)cap * sizeof *items);
            }
            mt_prompt_item *it = &items[count];
            memset(it, 0, sizeof *it);
            if (*s == '{') {
                st = parse_json_line(path, line, s, it, err);
            } else {
                it->text = mt_xstrdup(s);
            }
            if (!st) count++;
        }
        s = e + 1;
    }
    free(data);
    if (!st && count == 0) st = mt_error_set(err, MT_ERR_FORMAT, "%s: no prompts", path);
    if (st) {
        mt_prompts_free(items, count);
        return st;
    }
    *out = items;
    *n = count;
    return MT_OK;
}
