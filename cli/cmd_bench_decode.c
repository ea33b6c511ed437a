/* cmd_bench_decode.c — `moetune bench decode --model DIR`: batched decode throughput on the
 * paged KV cache at several batch sizes, without adapters and with every row on one of N
 * rank-R LoRA adapters (all linear layers, routed experts included), measured in alternating
 * rounds of one run; prompt (prefill) throughput; and the time to load an adapter into a
 * running registry. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "model/model.h"
#include "peft/lora.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune bench decode --model DIR [--batch 1,8,32] [--adapters N] [--rank R] [--prompt P]\n"
            "                            [--tokens T] [--rounds K] [--threads N] [--quantize int8]\n"
            "\n"
            "Decodes T tokens for B sequences at once (B from --batch) after a P-token prompt each, on the\n"
            "paged KV cache: tokens/s of the decode steps (B·T / time) and of the prefill. With --adapters N\n"
            "every row uses one of N rank-R LoRA adapters on all linear layers (experts included),\n"
            "row i on adapter i mod N, timed in alternating rounds against no adapter. Then the time to\n"
            "load a rank-R adapter into a running registry (median of 10 loads).\n"
            "  --batch LIST    batch sizes (default 1,8,32)\n"
            "  --adapters N    adapters (default 8; 0 = only without)\n"
            "  --rank R        adapter rank (default 16)\n"
            "  --prompt P      prompt tokens per sequence (default 32)\n"
            "  --tokens T      decode steps (default 32)\n"
            "  --rounds K      alternating rounds, median reported (default 3)\n"
            "  --threads N     CPU threads (default: all cores)\n"
            "  --quantize int8 INT8 weight-only base (per channel, groups of 64 inputs)\n");
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* One run: B sequences prefilled with P tokens, then T decode steps; seconds of each part. */
static mt_status run_once(mt_model *m, int B, int P, int T, const mt_adapter *const *slots, int n_slots,
                          double *prefill_s, double *decode_s, mt_error *err) {
    const mt_config *cfg = mt_model_config(m);
    int V = cfg->vocab_size;
    int per = (P + T + 15) / 16 + 1;
    mt_kv_pool_opts po = {.block_size = 16, .n_blocks = B * per, .max_seqs = B, .max_seq_len = P + T + 1};
    mt_kv_pool *p = NULL;
    mt_decoder *d = NULL;
    int rows = B * P < 256 ? B * P : 256;
    if (rows < B) rows = B;
    mt_status st = mt_kv_pool_init(&p, m, &po, err);
    if (!st) st = mt_decoder_init(&d, m, rows, 0, err);
    int32_t *seq = mt_xmalloc((size_t)rows * sizeof(int32_t)), *tok = mt_xmalloc((size_t)rows * sizeof(int32_t));
    int32_t *slot = mt_xmalloc((size_t)rows * sizeof(int32_t)), *lr = mt_xmalloc((size_t)B * sizeof(int32_t));
    int *seqs = mt_xmalloc((size_t)B * sizeof(int));
    float *logits = mt_xmalloc((size_t)B * V * sizeof(float));
    mt_rng r;
    mt_rng_seed(&r, 99);
    for (int b = 0; !st && b < B; b++) st = mt_kv_seq_open(p, &seqs[b], err);
    double t0 = mt_now_seconds();
    /* prefill: the prompts row after row, in steps of up to `rows` */
    for (long done = 0, total = (long)B * P; !st && done < total;) {
        int n = total - done < rows ? (int)(total - done) : rows;
        for (int i = 0; i < n; i++) {
            int b = (int)((done + i) / P);
            seq[i] = seqs[b];
            tok[i] = (int32_t)mt_rng_below(&r, (uint64_t)V);
            slot[i] = n_slots ? b % n_slots : 0;
        }
        mt_decode_batch db = {.n_rows = n, .tokens = tok, .seq = seq, .slot = slot, .adapters = slots,
                              .n_slots = n_slots};
        st = mt_decode_step(d, p, &db, NULL, err);
        done += n;
    }
    double t1 = mt_now_seconds();
    for (int k = 0; !st && k < T; k++) {
        for (int b = 0; b < B; b++) {
            seq[b] = seqs[b];
            tok[b] = (int32_t)mt_rng_below(&r, (uint64_t)V);
            slot[b] = n_slots ? b % n_slots : 0;
            lr[b] = b;
        }
        mt_decode_batch db = {.n_rows = B, .tokens = tok, .seq = seq, .slot = slot, .adapters = slots,
                              .n_slots = n_slots, .logit_rows = lr, .n_logits = B};
        st = mt_decode_step(d, p, &db, logits, err);
    }
    double t2 = mt_now_seconds();
    *prefill_s = t1 - t0;
    *decode_s = t2 - t1;
    free(seq);
    free(tok);
    free(slot);
    free(lr);
    free(seqs);
    free(logits);
    mt_decoder_free(d);
    mt_kv_pool_free(p);
    return st;
}

static bool parse_list(const char *s, long *out, int cap, int *n) {
    *n = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (*n == cap || !mt_cli_parse_long(tok, 1, 4096, &out[*n])) return false;
        (*n)++;
    }
    return *n > 0;
}

int mt_cmd_bench_decode(int argc, char **argv) {
    const char *model_dir = NULL;
    long batches[16] = {1, 8, 32}, n_adapters = 8, rank = 16, prompt = 32, tokens = 32, rounds = 3, threads = 0;
    int n_batches = 3;
    mt_quant quant = MT_QUANT_NONE;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (mt_cli_is_flag(a, "--model")) {
            if (!(model_dir = mt_cli_value("--model", argc, argv, &i))) goto bad;
        } else if (mt_cli_is_flag(a, "--batch")) {
            if (!(v = mt_cli_value("--batch", argc, argv, &i)) || !parse_list(v, batches, 16, &n_batches)) goto bad;
        } else if (mt_cli_is_flag(a, "--adapters")) {
            if (!(v = mt_cli_value("--adapters", argc, argv, &i)) || !mt_cli_parse_long(v, 0, 256, &n_adapters)) goto bad;
        } else if (mt_cli_is_flag(a, "--rank")) {
            if (!(v = mt_cli_value("--rank", argc, argv, &i)) || !mt_cli_parse_long(v, 1, 256, &rank)) goto bad;
        } else if (mt_cli_is_flag(a, "--prompt")) {
            if (!(v = mt_cli_value("--prompt", argc, argv, &i)) || !mt_cli_parse_long(v, 1, 1 << 16, &prompt)) goto bad;
        } else if (mt_cli_is_flag(a, "--tokens")) {
            if (!(v = mt_cli_value("--tokens", argc, argv, &i)) || !mt_cli_parse_long(v, 1, 1 << 16, &tokens)) goto bad;
        } else if (mt_cli_is_flag(a, "--rounds")) {
            if (!(v = mt_cli_value("--rounds", argc, argv, &i)) || !mt_cli_parse_long(v, 1, 100, &rounds)) goto bad;
        } else if (mt_cli_is_flag(a, "--threads")) {
            if (!(v = mt_cli_value("--threads", argc, argv, &i)) || !mt_cli_parse_long(v, 0, 4096, &threads)) goto bad;
        } else if (mt_cli_is_flag(a, "--quantize")) {
            if (!(v = mt_cli_value("--quantize", argc, argv, &i)) || mt_quant_from_name(v, &quant) != MT_OK) goto bad;
        } else {
            fprintf(stderr, "moetune bench decode: unknown argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
        continue;
    bad:
        fprintf(stderr, "moetune bench decode: %s needs a valid value\n", a);
        usage(stderr);
        return 2;
    }
    if (!model_dir) {
        fprintf(stderr, "moetune bench decode: --model is required\n");
        usage(stderr);
        return 2;
    }
    mt_backend *be = mt_cli_backend("bench", NULL, (int)threads);
    if (!be) return 1;
    mt_error err = {0};
    mt_model *m = NULL;
    mt_lora **loras = mt_xcalloc((size_t)(n_adapters > 0 ? n_adapters : 1), sizeof *loras);
    const mt_adapter **slots = mt_xcalloc((size_t)(n_adapters > 0 ? n_adapters : 1), sizeof *slots);
    mt_status st = mt_model_load(&m, model_dir, be, &err);
    if (!st) st = mt_model_quantize(m, quant, 0, &err);
    static const char *const all[] = {"all-linear"};
    for (int a = 0; !st && a < n_adapters; a++) {
        mt_lora_config c;
        mt_lora_config_default(&c);
        c.r = (int)rank;
        c.alpha = 2.0f * (float)rank;
        c.targets = all;
        c.n_targets = 1;
        c.seed = 100 + (uint64_t)a;
        st = mt_lora_attach(&loras[a], m, &c, &err);
        if (st) break;
        /* PEFT initialises B to zero; real adapters are not, and zeros could hide nothing
         * here (the GEMMs run either way), but random values keep the output honest */
        mt_rng r;
        mt_rng_seed(&r, 7 + (uint64_t)a);
        for (int t = 1; t < mt_lora_tensor_count(loras[a]); t += 2) {
            mt_lora_tensor *lt = mt_lora_tensor_at(loras[a], t);
            for (int64_t k = 0; k < lt->numel; k++) lt->data[k] = 0.01f * mt_rng_normal(&r);
        }
        slots[a] = mt_lora_adapter(loras[a]);
    }
    int rc = 0;
    if (!st) {
        const mt_config *cfg = mt_model_config(m);
        int64_t active = 0, total = mt_config_param_count(cfg, &active);
        printf("model:    %s (%s, %.2f M parameters, %.2f M active)\n", model_dir, mt_family_name(cfg->family),
               total / 1e6, active / 1e6);
        printf("device:   %s\n", mt_backend_describe(be));
        printf("work:     prompt %ld tokens, %ld decode steps per sequence; median of %ld alternating rounds\n", prompt,
               tokens, rounds);
        if (n_adapters) {
            mt_lora_summary s;
            mt_lora_get_summary(loras[0], &s);
            printf("adapters: %ld x rank %ld on all linear layers (%d modules each, %lld parameters)\n", n_adapters,
                   rank, s.n_modules, (long long)s.n_params);
        }
        printf("%6s %14s %14s %14s %14s %8s\n", "batch", "pp tok/s", "tg tok/s", "pp+adapters", "tg+adapters",
               "ratio");
    }
    for (int bi = 0; !st && bi < n_batches; bi++) {
        int B = (int)batches[bi];
        double *pb = mt_xcalloc((size_t)rounds, sizeof(double)), *db = mt_xcalloc((size_t)rounds, sizeof(double));
        double *pa = mt_xcalloc((size_t)rounds, sizeof(double)), *da = mt_xcalloc((size_t)rounds, sizeof(double));
        double warm_p, warm_d;
        st = run_once(m, B, (int)prompt, 2, NULL, 0, &warm_p, &warm_d, &err);
        for (int k = 0; !st && k < rounds; k++) {
            st = run_once(m, B, (int)prompt, (int)tokens, NULL, 0, &pb[k], &db[k], &err);
            if (!st && n_adapters)
                st = run_once(m, B, (int)prompt, (int)tokens, slots, (int)n_adapters, &pa[k], &da[k], &err);
        }
        if (!st) {
            double ptok = (double)B * prompt, dtok = (double)B * tokens;
            double p0 = ptok / median(pb, (int)rounds), d0 = dtok / median(db, (int)rounds);
            if (n_adapters) {
                double p1 = ptok / median(pa, (int)rounds), d1 = dtok / median(da, (int)rounds);
                printf("%6d %14.1f %14.1f %14.1f %14.1f %7.1f%%\n", B, p0, d0, p1, d1, 100 * d1 / d0);
            } else {
                printf("%6d %14.1f %14.1f %14s %14s %8s\n", B, p0, d0, "-", "-", "-");
            }
            fflush(stdout);
        }
        free(pb);
        free(db);
        free(pa);
        free(da);
    }
    if (!st && n_adapters) {
        /* hot load: a registry that already serves adapters takes one more */
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/moetune-bench-adapter-%d", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
                 (int)getpid());
        mt_lora_meta meta = {0};
        mt_model_content_hash(m, meta.base_hash);
        st = mt_lora_save_peft(loras[0], dir, &meta, &err);
        mt_registry *reg = NULL;
        mt_registry_opts ro = {.max_rank = (int)rank};
        if (!st) st = mt_registry_init(&reg, m, meta.base_hash, &ro, &err);
        double t[10];
        for (int k = 0; !st && k < 10; k++) {
            double t0 = mt_now_seconds();
            st = mt_registry_load(reg, k % 2 ? "a" : "b", dir, NULL, &err);
            t[k] = mt_now_seconds() - t0;
        }
        if (!st) printf("hot load of one rank-%ld adapter into a running registry: %.2f ms (median of 10)\n", rank,
                        1e3 * median(t, 10));
        mt_registry_free(reg);
        char path[4200];
        const char *files[] = {"adapter_config.json", "adapter_model.safetensors", "moetune.json"};
        for (int i = 0; i < 3; i++) {
            snprintf(path, sizeof path, "%s/%s", dir, files[i]);
            remove(path);
        }
        remove(dir);
    }
    if (st) rc = mt_cli_fail("bench decode", &err);
    for (int a = 0; a < n_adapters; a++) mt_lora_free(loras[a]);
    free(loras);
    free(slots);
    mt_model_free(m);
    mt_backend_free(be);
    return rc;
}
