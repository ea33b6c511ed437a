/* feedback.c — POST /v1/feedback: from serving back to training. A client names two choices it
 * was served for one prompt (by response id and choice index) and which it prefers, or rates
 * one; the store makes the pair (store/feedback.c). The lookup runs on the recorder's handle
 * after every row queued before it is committed, so feedback sent the moment a response
 * arrives finds that response. */
#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine-impl.h"

typedef struct fb_call {
    const mt_eng_feedback *f;
    mt_feedback_result res;
    mt_eng_http_error h; /* filled when the call fails */
} fb_call;

/* One side, or the HTTP error that names it: unknown id 404, a bad index or a failed request 400. */
static bool find_choice(mt_store *s, const char *id, int index, const char *id_field, const char *index_field,
                        mt_served_choice *c, mt_eng_http_error *h) {
    mt_error err = {0};
    mt_status st = mt_store_served_choice(s, id, index, c, &err);
    if (st == MT_OK) return true;
    if (st == MT_ERR_NOT_FOUND)
        mt_eng_herr(h, 404, "invalid_request_error", id_field, "completion_not_found",
                    "no completion served by this store has the id '%.200s'", id);
    else if (st == MT_ERR_INVALID)
        mt_eng_herr(h, 400, "invalid_request_error", index_field, "invalid_choice", "%s", err.msg);
    else
        mt_eng_herr(h, 500, "server_error", NULL, "store_error", "%s", err.msg);
    return false;
}

static mt_status run_feedback(mt_store *s, void *ctx, mt_error *err) {
    fb_call *call = ctx;
    const mt_eng_feedback *f = call->f;
    mt_eng_http_error *h = &call->h;
    mt_feedback_opts o = {.dataset = f->dataset, .annotator = f->annotator[0] ? f->annotator : NULL, .eval = f->eval};
    mt_served_choice a = {0}, b = {0};
    mt_status st = MT_ERR_INVALID; /* with h filled, unless the store failed */
    if (f->is_rating) {
        if (find_choice(s, f->chosen_id, f->chosen_index, "id", "index", &a, h)) {
            st = mt_store_feedback_rate(s, &a, f->rating, &o, &call->res, err);
            if (st != MT_OK) mt_eng_herr(h, 500, "server_error", NULL, "store_error", "%s", err->msg);
        }
    } else if (find_choice(s, f->chosen_id, f->chosen_index, "chosen_id", "chosen_index", &a, h) &&
               find_choice(s, f->rejected_id, f->rejected_index, "rejected_id", "rejected_index", &b, h)) {
        /* the store refuses these too; here they get their own codes */
        if (a.format != b.format || strcmp(a.prompt_hash, b.prompt_hash))
            mt_eng_herr(h, 400, "invalid_request_error", "rejected_id", "prompt_mismatch",
                        "'%s' and '%s' answer different prompts; a preference compares two completions of one prompt",
                        f->chosen_id, f->rejected_id);
        else if (!a.text[0] || !b.text[0])
            mt_eng_herr(h, 400, "invalid_request_error", !a.text[0] ? "chosen_id" : "rejected_id", "empty_completion",
                        "the completion '%s' is empty; a pair needs two texts", !a.text[0] ? f->chosen_id : f->rejected_id);
        else if (!strcmp(a.text, b.text))
            mt_eng_herr(h, 400, "invalid_request_error", "rejected_id", "identical_completions",
                        "'%s' and '%s' have the same text; a pair needs two different completions", f->chosen_id,
                        f->rejected_id);
        else {
            st = mt_store_feedback_prefer(s, &a, &b, &o, &call->res, err);
            if (st != MT_OK) mt_eng_herr(h, 500, "server_error", NULL, "store_error", "%s", err->msg);
        }
    }
    mt_served_choice_free(&a);
    mt_served_choice_free(&b);
    return st;
}

int mt_eng_handle_feedback(mt_server *s, struct MHD_Connection *c, const char *body, size_t len) {
    mt_engine *e = s->e;
    mt_eng_http_error h;
    if (!e->rec) {
        mt_eng_herr(&h, 409, "invalid_request_error", NULL, "no_store",
                    "this server was started without --store: there is no store to find served completions in or "
                    "write preference pairs to");
        return mt_eng_send_error(s, c, MT_EP_FEEDBACK, "", &h);
    }
    mt_eng_feedback f;
    if (!mt_eng_parse_feedback(body, len, &f, &h)) return mt_eng_send_error(s, c, MT_EP_FEEDBACK, "", &h);
    if (!f.is_rating && !strcmp(f.chosen_id, f.rejected_id) && f.chosen_index == f.rejected_index) {
        mt_eng_herr(&h, 400, "invalid_request_error", "rejected_id", "same_completion",
                    "chosen and rejected are the same completion ('%s', choice %d)", f.chosen_id, f.chosen_index);
        return mt_eng_send_error(s, c, MT_EP_FEEDBACK, "", &h);
    }
    fb_call call = {.f = &f};
    mt_error err = {0};
    if (mt_recorder_with_store(e->rec, run_feedback, &call, &err) != MT_OK)
        return mt_eng_send_error(s, c, MT_EP_FEEDBACK, "", &call.h);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "feedback");
    cJSON_AddStringToObject(o, "dataset", f.dataset);
    cJSON_AddStringToObject(o, "split", f.eval ? "eval" : "train");
    if (f.is_rating) {
        cJSON_AddStringToObject(o, "id", f.chosen_id);
        cJSON_AddNumberToObject(o, "index", f.chosen_index);
        cJSON_AddNumberToObject(o, "rating", f.rating);
    }
    cJSON_AddNumberToObject(o, "pairs_added", (double)call.res.n_added);
    cJSON_AddNumberToObject(o, "duplicates", (double)call.res.n_duplicates);
    if (call.res.pair_id)
        cJSON_AddNumberToObject(o, "pair_id", (double)call.res.pair_id);
    else
        cJSON_AddNullToObject(o, "pair_id");
    char *json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    int ok = mt_eng_send(s, c, MT_EP_FEEDBACK, "", 200, "application/json", json, strlen(json));
    cJSON_free(json);
    return ok;
}
