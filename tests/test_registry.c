/* test_registry.c — the adapter registry: load, replace, unload, versions held by sequences
 * in flight and freed when the last one ends, LRU eviction, refusals (another base, a rank
 * above the cap, a broken folder) that leave the registry as it was; and threads replacing
 * an adapter while others decode with it: every sequence decodes with exactly the version it
 * acquired (built with -fsanitize=thread in CI, see .ci/run). */
#include "model_testlib.h"

#include <pthread.h>
#include <stdatomic.h>

#include "peft/lora.h"

static mt_backend *g_be;

/* One thread per backend: ThreadSanitizer cannot see OpenMP's barriers, and decode results
 * do not depend on the thread count apart from the GEMMs' last bits. */
static int setup(void **state) {
    (void)state;
    mt_error err = {0};
    return mt_backend_init(&g_be, MT_BACKEND_CPU, 1, &err) == MT_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    mt_backend_free(g_be);
    return 0;
}

/* Writes a rank-r LoRA on every linear of m, B random so it changes the output. */
static void write_adapter(mt_model *m, const char *dir, int r, uint64_t seed, const char *base_hash) {
    mt_error err = {0};
    static const char *const all[] = {"all-linear"};
    mt_lora_config c;
    mt_lora_config_default(&c);
    c.r = r;
    c.alpha = (float)(2 * r);
    c.targets = all;
    c.n_targets = 1;
    c.seed = seed;
    mt_lora *l = NULL;
    if (mt_lora_attach(&l, m, &c, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_rng rng;
    mt_rng_seed(&rng, seed * 7 + 1);
    for (int t = 1; t < mt_lora_tensor_count(l); t += 2) {
        mt_lora_tensor *lt = mt_lora_tensor_at(l, t);
        for (int64_t k = 0; k < lt->numel; k++) lt->data[k] = 0.2f * mt_rng_normal(&rng);
    }
    mt_lora_meta meta = {0};
    snprintf(meta.base_hash, sizeof meta.base_hash, "%s", base_hash);
    if (mt_lora_save_peft(l, dir, &meta, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_lora_free(l);
}

enum { PROMPT = 5, STEPS = 4 };

/* Greedy-free decode of a fixed token stream with one adapter: the logits of every step. */
static void decode_with(mt_model *m, mt_decoder *d, mt_kv_pool *p, const mt_adapter *a, const int32_t *tokens,
                        float *logits) {
    mt_error err = {0};
    int V = mt_model_config(m)->vocab_size, s;
    if (mt_kv_seq_open(p, &s, &err) != MT_OK) fail_msg("%s", err.msg);
    int32_t seq[PROMPT], last = PROMPT - 1;
    for (int i = 0; i < PROMPT; i++) seq[i] = s;
    const mt_adapter *slots[1] = {a};
    mt_decode_batch b = {.n_rows = PROMPT, .tokens = tokens, .seq = seq, .adapters = slots, .n_slots = 1,
                         .logit_rows = &last, .n_logits = 1};
    if (mt_decode_step(d, p, &b, logits, &err) != MT_OK) fail_msg("%s", err.msg);
    for (int k = 1; k < STEPS; k++) {
        int32_t zero = 0;
        mt_decode_batch one = {.n_rows = 1, .tokens = tokens + PROMPT + k - 1, .seq = seq, .adapters = slots,
                               .n_slots = 1, .logit_rows = &zero, .n_logits = 1};
        if (mt_decode_step(d, p, &one, logits + (size_t)k * V, &err) != MT_OK) fail_msg("%s", err.msg);
    }
    mt_kv_seq_close(p, s);
}

typedef struct fixture {
    mt_model *m;
    char hash[65];
    char dirs[3][4200]; /* v1, v2 of the same name; a rank-8 one */
} fixture;

static void make_fixture(fixture *f, const char *tmp) {
    f->m = load_fixture(g_be, "deepseek_v3");
    mt_model_content_hash(f->m, f->hash);
    for (int i = 0; i < 3; i++) {
        snprintf(f->dirs[i], sizeof f->dirs[i], "%s/adapter%d", tmp, i);
        write_adapter(f->m, f->dirs[i], i == 2 ? 8 : 4, 11 + (uint64_t)i, f->hash);
    }
}

static void versions_and_refusals(void **state) {
    (void)state;
    fixture f;
    make_fixture(&f, mt_test_tmpdir("test_registry_versions"));
    mt_error err = {0};
    mt_registry *r = NULL;
    mt_registry_opts o = {.max_rank = 4, .max_loaded = 2};
    assert_int_equal(mt_registry_init(&r, f.m, f.hash, &o, &err), MT_OK);
    int64_t ver = 0;
    assert_int_equal(mt_registry_load(r, "x", f.dirs[0], &ver, &err), MT_OK);
    assert_int_equal(ver, 1);
    mt_adapter_ref old;
    assert_int_equal(mt_registry_acquire(r, "x", &old, &err), MT_OK);
    assert_int_equal(old.version, 1);
    assert_non_null(old.adapter);
    /* replaced while held: the holder keeps version 1, the next acquire gets 2 */
    assert_int_equal(mt_registry_load(r, "x", f.dirs[1], &ver, &err), MT_OK);
    assert_int_equal(ver, 2);
    assert_int_equal(mt_registry_live_versions(r), 2);
    mt_adapter_ref cur;
    assert_int_equal(mt_registry_acquire(r, "x", &cur, &err), MT_OK);
    assert_int_equal(cur.version, 2);
    assert_ptr_not_equal(cur.adapter, old.adapter);
    mt_registry_info info;
    assert_true(mt_registry_find(r, "x", &info));
    assert_int_equal(info.version, 2);
    assert_int_equal(info.refs, 1);
    assert_int_equal(info.max_rank, 4);
    assert_string_equal(info.base_hash, f.hash);
    assert_true(info.load_seconds >= 0);
    /* the replaced version is freed when its last holder lets go (ASan: no leak, no use) */
    mt_registry_release(r, &old);
    assert_null(old.handle);
    assert_int_equal(mt_registry_live_versions(r), 1);

    /* refusals leave everything as it was */
    mt_error e = {0};
    assert_int_equal(mt_registry_load(r, "big", f.dirs[2], NULL, &e), MT_ERR_INVALID);
    assert_non_null(strstr(e.msg, "rank 8"));
    mt_registry *other = NULL;
    char wrong[65];
    memset(wrong, 'a', 64);
    wrong[64] = '\0';
    assert_int_equal(mt_registry_init(&other, f.m, wrong, &o, &err), MT_OK);
    mt_error_clear(&e);
    assert_int_equal(mt_registry_load(other, "x", f.dirs[0], NULL, &e), MT_ERR_INVALID);
    assert_non_null(strstr(e.msg, f.hash));
    assert_non_null(strstr(e.msg, wrong));
    assert_int_equal(mt_registry_count(other), 0);
    mt_registry_free(other);
    mt_error_clear(&e);
    assert_int_equal(mt_registry_load(r, "x", "/nonexistent/adapter", NULL, &e), MT_ERR_NOT_FOUND);
    assert_true(mt_registry_find(r, "x", &info));
    assert_int_equal(info.version, 2);
    mt_error_clear(&e);
    assert_int_equal(mt_registry_acquire(r, "nope", &old, &e), MT_ERR_NOT_FOUND);
    assert_int_equal(mt_registry_unload(r, "nope", &e), MT_ERR_NOT_FOUND);

    /* LRU: with two names loaded, a third evicts the least recently used one */
    assert_int_equal(mt_registry_load(r, "y", f.dirs[0], NULL, &err), MT_OK);
    mt_adapter_ref tmp;
    assert_int_equal(mt_registry_acquire(r, "x", &tmp, &err), MT_OK); /* x is now fresher than y */
    mt_registry_release(r, &tmp);
    assert_int_equal(mt_registry_load(r, "z", f.dirs[1], NULL, &err), MT_OK);
    assert_int_equal(mt_registry_count(r), 2);
    assert_false(mt_registry_find(r, "y", &info));
    assert_true(mt_registry_find(r, "x", &info));
    assert_true(mt_registry_get(r, 0, &info));
    assert_string_equal(info.name, "x");
    assert_true(mt_registry_get(r, 1, &info));
    assert_string_equal(info.name, "z");
    assert_false(mt_registry_get(r, 2, &info));
    /* unload while held: the holder keeps decoding; a new load of the name continues the
     * version count */
    assert_int_equal(mt_registry_unload(r, "x", &err), MT_OK);
    assert_false(mt_registry_find(r, "x", &info));
    assert_int_equal(mt_registry_live_versions(r), 2);
    mt_registry_release(r, &cur);
    assert_int_equal(mt_registry_live_versions(r), 1);
    assert_int_equal(mt_registry_load(r, "x", f.dirs[0], &ver, &err), MT_OK);
    assert_int_equal(ver, 3);
    mt_registry_free(r);
    mt_model_free(f.m);
}

/* ---- threads ---- */

typedef struct shared {
    mt_model *m;
    mt_registry *r;
    const char *dirs[2];
    int32_t tokens[PROMPT + STEPS];
    float *want[2]; /* [STEPS, V] logits with version 1's and version 2's weights */
    atomic_int stop;
    atomic_int decoded, failures;
    int64_t seen[2]; /* sequences that ran on each file's weights (by version parity) */
    pthread_mutex_t mu;
} shared;

static void *decoder_thread(void *arg) {
    shared *s = arg;
    mt_error err = {0};
    int V = mt_model_config(s->m)->vocab_size;
    mt_kv_pool *p = NULL;
    mt_kv_pool_opts po = {.block_size = 4, .n_blocks = 8, .max_seqs = 1};
    mt_decoder *d = NULL;
    if (mt_kv_pool_init(&p, s->m, &po, &err) || mt_decoder_init(&d, s->m, PROMPT, 4, &err)) {
        atomic_fetch_add(&s->failures, 1);
        return NULL;
    }
    float *got = mt_xmalloc((size_t)STEPS * V * sizeof(float));
    while (!atomic_load(&s->stop) || atomic_load(&s->decoded) < 8) {
        mt_adapter_ref ref;
        if (mt_registry_acquire(s->r, "x", &ref, &err) != MT_OK) {
            atomic_fetch_add(&s->failures, 1);
            break;
        }
        decode_with(s->m, d, p, ref.adapter, s->tokens, got);
        /* loads alternate the two files: odd versions are file 0, even ones file 1 */
        int which = ref.version % 2 ? 0 : 1;
        if (mt_test_rel_err(got, s->want[which], (size_t)STEPS * V, 1e-30) > 1e-5) atomic_fetch_add(&s->failures, 1);
        pthread_mutex_lock(&s->mu);
        s->seen[which]++;
        pthread_mutex_unlock(&s->mu);
        mt_registry_release(s->r, &ref);
        atomic_fetch_add(&s->decoded, 1);
    }
    free(got);
    mt_decoder_free(d);
    mt_kv_pool_free(p);
    return NULL;
}

static void replace_while_decoding(void **state) {
    (void)state;
    fixture f;
    make_fixture(&f, mt_test_tmpdir("test_registry_threads"));
    mt_error err = {0};
    shared s = {.m = f.m, .dirs = {f.dirs[0], f.dirs[1]}};
    pthread_mutex_init(&s.mu, NULL);
    int V = mt_model_config(f.m)->vocab_size;
    random_tokens(s.tokens, PROMPT + STEPS, V, 5);
    /* the expected logits of each file, decoded alone */
    mt_registry_opts o = {.max_rank = 4};
    if (mt_registry_init(&s.r, f.m, f.hash, &o, &err) != MT_OK) fail_msg("%s", err.msg);
    mt_kv_pool *p = NULL;
    mt_kv_pool_opts po = {.block_size = 4, .n_blocks = 8, .max_seqs = 1};
    mt_decoder *d = NULL;
    if (mt_kv_pool_init(&p, f.m, &po, &err) || mt_decoder_init(&d, f.m, PROMPT, 4, &err)) fail_msg("%s", err.msg);
    for (int i = 0; i < 2; i++) {
        s.want[i] = mt_xmalloc((size_t)STEPS * V * sizeof(float));
        if (mt_registry_load(s.r, "x", f.dirs[i], NULL, &err) != MT_OK) fail_msg("%s", err.msg);
        mt_adapter_ref ref;
        if (mt_registry_acquire(s.r, "x", &ref, &err) != MT_OK) fail_msg("%s", err.msg);
        decode_with(f.m, d, p, ref.adapter, s.tokens, s.want[i]);
        mt_registry_release(s.r, &ref);
    }
    assert_true(mt_test_rel_err(s.want[0], s.want[1], (size_t)STEPS * V, 1e-30) > 1e-3);
    mt_decoder_free(d);
    mt_kv_pool_free(p);
    /* version 3 (file 0) is current when the decoders start */
    if (mt_registry_load(s.r, "x", f.dirs[0], NULL, &err) != MT_OK) fail_msg("%s", err.msg);
    enum { THREADS = 3, SWAPS = 12 };
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, decoder_thread, &s);
    int64_t last = 3;
    for (int k = 0; k < SWAPS; k++) {
        int64_t v;
        if (mt_registry_load(s.r, "x", f.dirs[(k + 1) % 2], &v, &err) != MT_OK) fail_msg("%s", err.msg);
        assert_int_equal(v, last + 1);
        last = v;
        /* a sequence that starts after the load returns gets the new version */
        mt_adapter_ref ref;
        if (mt_registry_acquire(s.r, "x", &ref, &err) != MT_OK) fail_msg("%s", err.msg);
        assert_true(ref.version >= v);
        mt_registry_release(s.r, &ref);
    }
    atomic_store(&s.stop, 1);
    for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    print_message("[ registry ] %d sequences decoded across %d swaps: %lld on file 0, %lld on file 1\n",
                  atomic_load(&s.decoded), SWAPS, (long long)s.seen[0], (long long)s.seen[1]);
    assert_int_equal(atomic_load(&s.failures), 0);
    assert_true(atomic_load(&s.decoded) >= 8);
    /* every replaced version was freed once its last sequence ended */
    assert_int_equal(mt_registry_live_versions(s.r), 1);
    mt_registry_free(s.r);
    pthread_mutex_destroy(&s.mu);
    free(s.want[0]);
    free(s.want[1]);
    mt_model_free(f.m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(versions_and_refusals),
        cmocka_unit_test(replace_while_decoding),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
