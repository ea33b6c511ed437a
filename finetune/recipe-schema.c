/* recipe-schema.c — every recipe key, once, as data: dotted path, type, default, range or
 * allowed values, where it lives in mt_recipe, and its one-line doc. The loader, the --set
 * overrides, the canonical dump and docs/recipes.md all walk this table. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "recipe-impl.h"

/* The loader writes enum fields through an int; the enums must be int-sized. */
_Static_assert(sizeof(mt_recipe_method) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_recipe_adapter) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_recipe_lora_init) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_recipe_format) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_recipe_schedule) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_recipe_device) == sizeof(int), "enum size");

/* Index = enum value. */
static const char *const method_names[] = {"sft", NULL};
static const char *const adapter_names[] = {"lora", "none", NULL};
static const char *const init_names[] = {"default", "gaussian", NULL};
static const char *const format_names[] = {"auto", "text", "prompt_completion", "messages", "plain", NULL};
static const char *const schedule_names[] = {"cosine", "linear", "constant", NULL};
static const char *const device_names[] = {"cpu", "cuda", NULL};

/* Run names become folder names and store keys: keep them to a portable file-name alphabet. */
static bool check_name(const char *s, char *why, size_t cap) {
    size_t n = strlen(s);
    if (n == 0 || n > 64) {
        snprintf(why, cap, "must be 1 to 64 characters");
        return false;
    }
    if (s[0] == '.' || s[0] == '-') {
        snprintf(why, cap, "must not start with '%c'", s[0]);
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                  c == '_' || c == '-';
        if (!ok) {
            snprintf(why, cap, "may hold only letters, digits, '.', '_' and '-'");
            return false;
        }
    }
    return true;
}

/* A module selector: a plain name or glob over [A-Za-z0-9_.*?[]!-], or "re:<regex>" (compiled
 * where the adapter is attached; here it only has to be non-empty). */
static bool check_selector(const char *s, char *why, size_t cap) {
    if (!strncmp(s, "re:", 3)) {
        if (!s[3]) {
            snprintf(why, cap, "'re:' needs a regular expression after it");
            return false;
        }
        return true;
    }
    if (!*s) {
        snprintf(why, cap, "empty module name");
        return false;
    }
    int depth = 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        if (c == '[') {
            if (depth++) break;
        } else if (c == ']') {
            if (!depth--) break;
        } else if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                     c == '.' || c == '*' || c == '?' || c == '!' || c == '-')) {
            snprintf(why, cap, "'%s': '%c' is not allowed in a module name or glob (use re:<regex> for a regex)", s,
                     c);
            return false;
        }
    }
    if (depth != 0) {
        snprintf(why, cap, "'%s': unbalanced '[' ']' in glob", s);
        return false;
    }
    return true;
}

static bool check_target(const char *s, char *why, size_t cap) {
    if (!strcmp(s, "all-linear")) return true;
    return check_selector(s, why, cap);
}

static bool check_exclude(const char *s, char *why, size_t cap) {
    if (!strcmp(s, "all-linear")) {
        snprintf(why, cap, "'all-linear' selects modules; it cannot be excluded");
        return false;
    }
    return check_selector(s, why, cap);
}

static bool check_pattern(const char *s, char *why, size_t cap) {
    if (!*s) {
        snprintf(why, cap, "empty pattern");
        return false;
    }
    return true;
}

#define OFF(field) offsetof(mt_recipe, field)

const mt_rsection mt_recipe_sections[] = {
    {"", "What the run is called and what it optimises."},
    {"model", "The base model."},
    {"adapter", "What is trained: LoRA adapters (as PEFT) or, with `type: none`, every weight."},
    {"data", "Training and evaluation data."},
    {"train", "Optimisation, schedule, intervals and hardware."},
    {"thresholds", "Domain-adaptive thresholds, written into the exported adapter's metadata."},
    {"output", "Where the run writes."},
};
const size_t mt_recipe_n_sections = sizeof mt_recipe_sections / sizeof mt_recipe_sections[0];

const mt_rkey mt_recipe_keys[] = {
    {.path = "name", .type = MT_RKEY_STRING, .offset = OFF(name), .def_doc = "the recipe file's name without `.yaml`",
     .check = check_name, .aliases = "run_name experiment_name",
     .doc = "Run name: shown by `moetune runs`, part of the default output.dir."},
    {.path = "method", .type = MT_RKEY_ENUM, .offset = OFF(method), .def = "sft", .names = method_names,
     .aliases = "trainer objective",
     .doc = "Training objective: `sft`, next-token cross-entropy on the data."},

    {.path = "model.path", .type = MT_RKEY_PATH, .offset = OFF(model.path), .flags = MT_RKEY_REQUIRED,
     .aliases = "base_model model_name_or_path model_path pretrained_model_name_or_path",
     .doc = "Base model folder in Hugging Face layout (`config.json`, `*.safetensors`)."},
    {.path = "model.tokenizer", .type = MT_RKEY_PATH, .offset = OFF(model.tokenizer), .def_doc = "`model.path`",
     .aliases = "tokenizer_path tokenizer_name tokenizer_name_or_path",
     .doc = "Folder holding tokenizer.json, when it is not the model's."},

    {.path = "adapter.type", .type = MT_RKEY_ENUM, .offset = OFF(adapter.type), .def = "lora", .names = adapter_names,
     .aliases = "peft_type adapter_type",
     .doc = "`lora`: low-rank adapters on frozen base weights; `none`: full fine-tuning of every weight."},
    {.path = "adapter.r", .type = MT_RKEY_INT, .offset = OFF(adapter.r), .def = "8", .min = 1, .max = 4096,
     .only_if = "adapter.type=lora", .aliases = "lora_r rank", .doc = "LoRA rank."},
    {.path = "adapter.alpha", .type = MT_RKEY_FLOAT, .offset = OFF(adapter.alpha), .def = "8", .min = 0, .max = 1e6,
     .flags = MT_RKEY_MIN_OPEN, .only_if = "adapter.type=lora", .aliases = "lora_alpha",
     .doc = "LoRA scale numerator: updates are scaled by alpha/r (alpha/√r with use_rslora)."},
    {.path = "adapter.dropout", .type = MT_RKEY_FLOAT, .offset = OFF(adapter.dropout), .def = "0", .min = 0, .max = 1,
     .flags = MT_RKEY_MAX_OPEN, .only_if = "adapter.type=lora", .aliases = "lora_dropout",
     .doc = "Dropout on the LoRA branch's input while training."},
    {.path = "adapter.use_rslora", .type = MT_RKEY_BOOL, .offset = OFF(adapter.use_rslora), .def = "false",
     .only_if = "adapter.type=lora", .aliases = "rslora",
     .doc = "Rank-stabilised LoRA: scale alpha/√r; exported as PEFT's use_rslora so servers apply the same scale."},
    {.path = "adapter.init", .type = MT_RKEY_ENUM, .offset = OFF(adapter.init), .def = "default", .names = init_names,
     .only_if = "adapter.type=lora", .aliases = "init_lora_weights lora_init",
     .doc = "PEFT's init_lora_weights: `default` (A Kaiming-uniform, B zero) or `gaussian` (A normal with std 1/r, "
            "B zero)."},
    {.path = "adapter.targets", .type = MT_RKEY_NAMES, .offset = OFF(adapter.targets),
     .def = "[q_proj, k_proj, v_proj, o_proj]", .only_if = "adapter.type=lora", .check = check_target,
     .aliases = "target_modules lora_target_modules lora_target_linear",
     .doc = "Modules that get adapters, matched against module paths such as `model.layers.0.mlp.experts.3.down_proj`: "
            "a name matches the path or its trailing components (as PEFT), a glob (`*`, `?`, `[...]`) or "
            "`re:<regex>` the whole path; or the single item `all-linear` (every linear layer except lm_head)."},
    {.path = "adapter.exclude", .type = MT_RKEY_NAMES, .offset = OFF(adapter.exclude), .def = "[]",
     .only_if = "adapter.type=lora", .check = check_exclude, .aliases = "exclude_modules",
     .doc = "Modules never adapted, same syntax as targets; wins over targets (e.g. `gate` keeps MoE routers "
            "frozen under all-linear)."},
    {.path = "adapter.rank_pattern", .type = MT_RKEY_INT_MAP, .offset = OFF(adapter.rank_pattern), .def = "{}",
     .min = 1, .max = 4096, .only_if = "adapter.type=lora", .check = check_pattern,
     .doc = "Per-module ranks, PEFT's rank_pattern: a regex key matches a module path's trailing components "
            "(`(.*\\.)?(key)$`); modules it does not match use r."},
    {.path = "adapter.alpha_pattern", .type = MT_RKEY_FLOAT_MAP, .offset = OFF(adapter.alpha_pattern), .def = "{}",
     .min = 0, .max = 1e6, .flags = MT_RKEY_MIN_OPEN, .only_if = "adapter.type=lora", .check = check_pattern,
     .doc = "Per-module alphas, PEFT's alpha_pattern, matched like rank_pattern."},

    {.path = "data.train", .type = MT_RKEY_PATHS, .offset = OFF(data.train), .flags = MT_RKEY_REQUIRED,
     .aliases = "train_file train_files datasets dataset path files",
     .doc = "Training data: JSONL files or folders (every `*.jsonl` in it, or every file for format plain), read "
            "in sorted order."},
    {.path = "data.eval", .type = MT_RKEY_PATHS, .offset = OFF(data.eval), .def = "[]",
     .aliases = "eval_file eval_files validation_file test_file eval_dataset",
     .doc = "Held-out data, same forms as train. Empty: eval_split of train is held out (or there is no eval)."},
    {.path = "data.format", .type = MT_RKEY_ENUM, .offset = OFF(data.format), .def = "auto", .names = format_names,
     .aliases = "type dataset_format",
     .doc = "Record format: `text` {\"text\"}, `prompt_completion` {\"prompt\", \"completion\"}, `messages` "
            "{\"messages\": [{\"role\", \"content\"}]}, `plain` raw text files; `auto` reads each JSONL file's "
            "first record."},
    {.path = "data.max_seq_len", .type = MT_RKEY_INT, .offset = OFF(data.max_seq_len), .def = "2048", .min = 8,
     .max = 1048576, .aliases = "max_length max_seq_length sequence_len seq_len block_size context_length",
     .doc = "Tokens per training sequence; longer documents are split."},
    {.path = "data.packing", .type = MT_RKEY_BOOL, .offset = OFF(data.packing), .def = "false",
     .aliases = "sample_packing pack",
     .doc = "Concatenate documents into full max_seq_len sequences instead of one padded document per sequence."},
    {.path = "data.mask_prompt", .type = MT_RKEY_BOOL, .offset = OFF(data.mask_prompt), .def = "true",
     .aliases = "completion_only_loss mask_prompts",
     .doc = "Loss only on completions and assistant turns: prompt tokens get label -100."},
    {.path = "data.shuffle", .type = MT_RKEY_BOOL, .offset = OFF(data.shuffle), .def = "true",
     .doc = "Shuffle training sequences every epoch, seeded by train.seed."},
    {.path = "data.eval_split", .type = MT_RKEY_FLOAT, .offset = OFF(data.eval_split), .def = "0", .min = 0,
     .max = 1, .flags = MT_RKEY_MAX_OPEN, .aliases = "val_set_size validation_split test_size eval_fraction",
     .doc = "Fraction of train documents held out for eval when data.eval is empty."},
    {.path = "data.cache_dir", .type = MT_RKEY_PATH, .offset = OFF(data.cache_dir), .def_doc = "`<output.dir>/cache`",
     .aliases = "cache dataset_cache_dir dataset_prepared_path",
     .doc = "Tokenized-data cache, reused by runs over the same data and tokenizer."},

    {.path = "train.seed", .type = MT_RKEY_INT, .offset = OFF(train.seed), .def = "42", .min = 0, .max = 2147483647,
     .aliases = "random_seed", .doc = "Seed of every random choice: initialisation, dropout, shuffling, router noise."},
    {.path = "train.steps", .type = MT_RKEY_INT, .offset = OFF(train.steps), .def = "null", .min = 1, .max = 1e9,
     .flags = MT_RKEY_NULLABLE, .aliases = "max_steps num_steps total_steps iters iterations",
     .doc = "Optimizer steps. Give steps or epochs, not both."},
    {.path = "train.epochs", .type = MT_RKEY_FLOAT, .offset = OFF(train.epochs), .def = "null",
     .def_doc = "`1` when steps is not given", .min = 0, .max = 1e6, .flags = MT_RKEY_NULLABLE | MT_RKEY_MIN_OPEN,
     .aliases = "num_epochs num_train_epochs", .doc = "Passes over the training data; fractions allowed."},
    {.path = "train.micro_batch", .type = MT_RKEY_INT, .offset = OFF(train.micro_batch), .def = "4", .min = 1,
     .max = 65536, .aliases = "micro_batch_size per_device_train_batch_size batch_size",
     .doc = "Sequences per forward/backward pass."},
    {.path = "train.grad_accum", .type = MT_RKEY_INT, .offset = OFF(train.grad_accum), .def = "1", .min = 1,
     .max = 65536, .aliases = "gradient_accumulation_steps gradient_accumulation accumulation_steps",
     .doc = "Micro-batches per optimizer step (batch = micro_batch × grad_accum sequences)."},
    {.path = "train.lr", .type = MT_RKEY_FLOAT, .offset = OFF(train.lr), .def = "0.0002", .min = 0, .max = 1,
     .flags = MT_RKEY_MIN_OPEN, .aliases = "learning_rate peak_lr", .doc = "Peak learning rate."},
    {.path = "train.schedule", .type = MT_RKEY_ENUM, .offset = OFF(train.schedule), .def = "cosine",
     .names = schedule_names, .aliases = "lr_scheduler_type lr_scheduler scheduler lr_schedule",
     .doc = "Learning rate after warmup: `cosine` or `linear` decay to lr × min_lr_ratio, or `constant`."},
    {.path = "train.warmup_steps", .type = MT_RKEY_INT, .offset = OFF(train.warmup_steps), .def = "0", .min = 0,
     .max = 1e9, .flags = MT_RKEY_NULLABLE, .aliases = "num_warmup_steps warmup",
     .doc = "Linear warmup from 0 to lr; must be less than steps. Give warmup_steps or warmup_ratio, not both."},
    {.path = "train.warmup_ratio", .type = MT_RKEY_FLOAT, .offset = OFF(train.warmup_ratio), .def = "null",
     .min = 0, .max = 1, .flags = MT_RKEY_NULLABLE | MT_RKEY_MAX_OPEN, .aliases = "warmup_fraction",
     .doc = "Warmup as a fraction of the total steps."},
    {.path = "train.min_lr_ratio", .type = MT_RKEY_FLOAT, .offset = OFF(train.min_lr_ratio), .def = "0", .min = 0,
     .max = 1, .aliases = "cosine_min_lr_ratio min_lr final_lr_ratio",
     .doc = "Where cosine and linear decay end, as a fraction of lr."},
    {.path = "train.weight_decay", .type = MT_RKEY_FLOAT, .offset = OFF(train.weight_decay), .def = "0", .min = 0,
     .max = 10, .aliases = "wd", .doc = "AdamW decoupled weight decay."},
    {.path = "train.beta1", .type = MT_RKEY_FLOAT, .offset = OFF(train.beta1), .def = "0.9", .min = 0, .max = 1,
     .flags = MT_RKEY_MAX_OPEN, .aliases = "adam_beta1", .doc = "AdamW first-moment decay."},
    {.path = "train.beta2", .type = MT_RKEY_FLOAT, .offset = OFF(train.beta2), .def = "0.999", .min = 0, .max = 1,
     .flags = MT_RKEY_MAX_OPEN, .aliases = "adam_beta2", .doc = "AdamW second-moment decay."},
    {.path = "train.eps", .type = MT_RKEY_FLOAT, .offset = OFF(train.eps), .def = "1.0e-08", .min = 0, .max = 1,
     .flags = MT_RKEY_MIN_OPEN, .aliases = "adam_epsilon epsilon adam_eps", .doc = "AdamW denominator epsilon."},
    {.path = "train.clip_norm", .type = MT_RKEY_FLOAT, .offset = OFF(train.clip_norm), .def = "1", .min = 0,
     .max = 1e6, .aliases = "max_grad_norm grad_clip gradient_clipping clip_grad_norm",
     .doc = "Clip the global gradient norm to this; 0 turns clipping off."},
    {.path = "train.router_aux_coef", .type = MT_RKEY_AUTO_FLOAT, .offset = OFF(train.router_aux_coef),
     .def = "auto", .min = 0, .max = 100, .aliases = "router_aux_loss_coef aux_loss_alpha aux_loss_coef",
     .doc = "Weight of the router load-balancing loss; `auto` takes the model config's router_aux_loss_coef "
            "(aux_loss_alpha for DeepSeek)."},
    {.path = "train.router_noise", .type = MT_RKEY_FLOAT, .offset = OFF(train.router_noise), .def = "0", .min = 0,
     .max = 1, .flags = MT_RKEY_MAX_OPEN, .aliases = "router_jitter_noise jitter_noise",
     .doc = "Router input jitter ε while training: inputs scaled by U(1−ε, 1+ε), as Mixtral; 0 = off."},
    {.path = "train.max_nan_skips", .type = MT_RKEY_INT, .offset = OFF(train.max_nan_skips), .def = "10", .min = 0,
     .max = 1e6, .aliases = "nan_skips max_skips",
     .doc = "Steps with a non-finite loss or gradient are skipped and recorded; after this many the run fails."},
    {.path = "train.eval_every", .type = MT_RKEY_INT, .offset = OFF(train.eval_every), .def = "100", .min = 0,
     .max = 1e9, .aliases = "eval_steps eval_interval",
     .doc = "Evaluate every this many steps, and at the end; 0: only at the end."},
    {.path = "train.save_every", .type = MT_RKEY_INT, .offset = OFF(train.save_every), .def = "500", .min = 0,
     .max = 1e9, .aliases = "save_steps save_interval checkpoint_every",
     .doc = "Checkpoint every this many steps, and at the end; 0: only at the end."},
    {.path = "train.log_every", .type = MT_RKEY_INT, .offset = OFF(train.log_every), .def = "10", .min = 0,
     .max = 1e9, .aliases = "logging_steps log_interval",
     .doc = "Log training metrics to the store every this many steps; 0: only at the end."},
    {.path = "train.save_total_limit", .type = MT_RKEY_INT, .offset = OFF(train.save_total_limit), .def = "3",
     .min = 0, .max = 1e6, .aliases = "keep_checkpoints max_checkpoints",
     .doc = "Checkpoints kept in output.dir (oldest deleted first); 0 keeps all."},
    {.path = "train.resume", .type = MT_RKEY_BOOL, .offset = OFF(train.resume), .def = "false",
     .aliases = "resume_from_checkpoint auto_resume",
     .doc = "Continue from the newest checkpoint in output.dir when there is one."},
    {.path = "train.threads", .type = MT_RKEY_INT, .offset = OFF(train.threads), .def = "0", .min = 0, .max = 4096,
     .aliases = "num_threads nthreads", .doc = "CPU threads; 0 uses every core."},
    {.path = "train.device", .type = MT_RKEY_ENUM, .offset = OFF(train.device), .def = "cpu", .names = device_names,
     .aliases = "backend",
     .doc = "Where the kernels run. Only `cpu` trains today: `cuda` is refused when the run starts, because "
            "the CUDA backend manages devices (memory, transfers, cuBLAS) but has no compute op yet."},

    {.path = "thresholds.dap", .type = MT_RKEY_AUTO_FLOAT, .offset = OFF(thresholds.dap), .def = "auto", .min = 0,
     .max = 1, .aliases = "dap_threshold threshold attention_threshold",
     .doc = "Attention-pruning threshold recorded with the run and exported in the adapter's metadata, for an "
            "inference engine to apply (nothing in moetune applies it yet): `auto` computes "
            "base × (1 − min(H, max_entropy) / max_entropy) from the mean per-sequence token entropy H (bits) of "
            "the training data (docs/data.md); a number fixes it."},
    {.path = "thresholds.base", .type = MT_RKEY_FLOAT, .offset = OFF(thresholds.base), .def = "0.5", .min = 0,
     .max = 1, .aliases = "base_threshold", .doc = "The threshold for zero-entropy data (dap: auto)."},
    {.path = "thresholds.max_entropy", .type = MT_RKEY_FLOAT, .offset = OFF(thresholds.max_entropy), .def = "4.5",
     .min = 0, .max = 64, .flags = MT_RKEY_MIN_OPEN, .aliases = "entropy_max",
     .doc = "Entropy (bits) at and above which the threshold is 0 (dap: auto)."},

    {.path = "output.dir", .type = MT_RKEY_PATH, .offset = OFF(output.dir), .def_doc = "`runs/<name>` beside the recipe",
     .aliases = "output_dir out_dir run_dir",
     .doc = "Run folder: checkpoints, the tokenized cache, logs."},
    {.path = "output.adapter", .type = MT_RKEY_PATH, .offset = OFF(output.adapter),
     .def_doc = "`<output.dir>/adapter`", .aliases = "adapter_dir export_dir save_dir export",
     .doc = "Export folder: the PEFT adapter (adapter_config.json + adapter_model.safetensors), or the whole "
            "model in Hugging Face layout when `adapter.type` is `none`."},
    {.path = "output.store", .type = MT_RKEY_PATH, .offset = OFF(output.store),
     .def_doc = "`moetune.db` beside output.dir", .aliases = "db database store_path run_store",
     .doc = "SQLite run store (runs, metrics, events); runs that share it can be compared."},
};
const size_t mt_recipe_n_keys = sizeof mt_recipe_keys / sizeof mt_recipe_keys[0];

void mt_rkey_section(const mt_rkey *k, char *buf, size_t cap) {
    const char *dot = strchr(k->path, '.');
    size_t n = dot ? (size_t)(dot - k->path) : 0;
    if (n >= cap) n = cap - 1;
    memcpy(buf, k->path, n);
    buf[n] = '\0';
}

const char *mt_rkey_leaf(const mt_rkey *k) {
    const char *dot = strchr(k->path, '.');
    return dot ? dot + 1 : k->path;
}

const mt_rkey *mt_rkey_find(const char *path) {
    for (size_t i = 0; i < mt_recipe_n_keys; i++)
        if (!strcmp(mt_recipe_keys[i].path, path)) return &mt_recipe_keys[i];
    return NULL;
}

bool mt_rkey_applies(const mt_rkey *k, const mt_recipe *r) {
    if (!k->only_if) return true;
    const char *eq = strchr(k->only_if, '=');
    MT_ASSERT(eq);
    char path[64];
    size_t n = (size_t)(eq - k->only_if);
    MT_ASSERT(n < sizeof path);
    memcpy(path, k->only_if, n);
    path[n] = '\0';
    const mt_rkey *cond = mt_rkey_find(path);
    MT_ASSERT(cond && cond->type == MT_RKEY_ENUM);
    int v = *(const int *)((const char *)r + cond->offset);
    return !strcmp(cond->names[v], eq + 1);
}
