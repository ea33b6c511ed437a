/* recipe-schema.c — every recipe key, once, as data: dotted path, type, default, range or
 * allowed values, where it lives in mt_recipe, and its one-line doc. The loader, the --set
 * overrides, the canonical dump and docs/recipes.md all walk this table. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "recipe-impl.h"
#include "rewards-impl.h"
#include "rl/rl.h"

/* The loader writes enum fields through an int; the enums must be int-sized. */
_Static_assert(sizeof(mt_recipe_method) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_recipe_adapter) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_recipe_lora_init) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_recipe_format) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_recipe_schedule) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_recipe_device) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_recipe_ref) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_recipe_quant) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_recipe_fdiv) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_recipe_grpo_loss) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_recipe_scale) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_recipe_kl) == sizeof(int), "enum size");

/* Index = enum value. */
static const char *const method_names[] = {"sft", "dpo", "simpo", "orpo", "reward", "grpo", "ppo", NULL};
static const char *const ref_names[] = {"base", "adapter", NULL};
static const char *const quant_names[] = {"none", "int8", NULL};
static const char *const fdiv_names[] = {"reverse_kl", "forward_kl", "js_divergence", "alpha_divergence", NULL};
static const char *const grpo_loss_names[] = {"grpo", "bnpo", "dr_grpo", "dapo", NULL};
static const char *const scale_names[] = {"group", "batch", "none", NULL};
static const char *const kl_names[] = {"k1", "k3", NULL};
static const char *const adapter_names[] = {"lora", "none", NULL};
static const char *const init_names[] = {"default", "gaussian", NULL};
static const char *const format_names[] = {"auto", "text", "prompt_completion", "messages", "plain", NULL};
static const char *const schedule_names[] = {"cosine", "linear", "constant", NULL};
static const char *const device_names[] = {"cpu", "cuda", NULL};
static const char *const ckpt_names[] = {"none", "layers", "selective", NULL};

const char *mt_recipe_method_name(mt_recipe_method m) {
    return (unsigned)m < sizeof method_names / sizeof method_names[0] - 1 ? method_names[m] : "?";
}

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

static bool check_loss_type(const char *s, char *why, size_t cap) {
    mt_dpo_loss t;
    mt_error e = {0};
    if (mt_dpo_loss_parse(s, &t, &e) == MT_OK) return true;
    snprintf(why, cap, "%s", e.msg);
    return false;
}

static bool check_rule(const char *s, char *why, size_t cap) {
    mt_reward_rule rule;
    return mt_reward_rule_spec_parse(s, &rule, why, cap);
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
    {"pref", "Preference losses (`method: dpo`, `simpo`, `orpo`), with TRL's names and defaults."},
    {"reference", "The frozen reference of `dpo`, `grpo` and `ppo` (never a second copy of the model)."},
    {"reward", "Reward models and rewards: the reward model's own loss, and what scores `grpo`/`ppo` completions."},
    {"rollout", "Sampling the completions `grpo` and `ppo` train on."},
    {"grpo", "Group-relative policy optimisation (TRL's GRPOConfig names)."},
    {"ppo", "PPO with a value head on the policy (TRL's PPOConfig names)."},
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
     .doc = "Training objective: `sft` (next-token cross-entropy), `dpo` (the DPO family against a reference), "
            "`simpo`, `orpo` (reference-free preference losses), `reward` (a Bradley–Terry reward model), `grpo`, "
            "`ppo` (reinforcement learning from sampled completions); docs/preference.md."},

    {.path = "model.path", .type = MT_RKEY_PATH, .offset = OFF(model.path), .flags = MT_RKEY_REQUIRED,
     .aliases = "base_model model_name_or_path model_path pretrained_model_name_or_path",
     .doc = "Base model folder in Hugging Face layout (`config.json`, `*.safetensors`)."},
    {.path = "model.tokenizer", .type = MT_RKEY_PATH, .offset = OFF(model.tokenizer), .def_doc = "`model.path`",
     .aliases = "tokenizer_path tokenizer_name tokenizer_name_or_path",
     .doc = "Folder holding tokenizer.json, when it is not the model's."},
    {.path = "model.quantize", .type = MT_RKEY_ENUM, .offset = OFF(model.quantize), .def = "none",
     .names = quant_names, .aliases = "quantization load_in_8bit",
     .doc = "Weight-only quantisation of the frozen base after loading: `int8` (symmetric, per output channel in "
            "groups of 64, fp32 scales; LoRA trains on top of it). Not with `adapter.type: none`."},

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
    {.path = "adapter.from", .type = MT_RKEY_PATH, .offset = OFF(adapter.from), .def_doc = "a new adapter",
     .only_if = "adapter.type=lora", .aliases = "init_from resume_adapter peft_model_id",
     .doc = "Start from this PEFT adapter folder (e.g. an SFT adapter before DPO): its rank, alpha and targets "
            "replace r, alpha, targets and exclude."},

    {.path = "data.train", .type = MT_RKEY_PATHS, .offset = OFF(data.train), .def = "[]",
     .def_doc = "required unless data.pairs is given", .aliases = "train_file train_files datasets dataset path files",
     .doc = "Training data: JSONL files or folders (every `*.jsonl` in it, or every file for format plain), read "
            "in sorted order. Preference methods read pairs in TRL's forms; grpo and ppo read prompts "
            "{\"prompt\", \"answer\"}."},
    {.path = "data.pairs", .type = MT_RKEY_STRING, .offset = OFF(data.pairs), .def_doc = "none",
     .only_if = "method=dpo|simpo|orpo|reward", .aliases = "pairs_dataset preference_dataset",
     .doc = "A pair dataset in output.store (`moetune pairs import`, or feedback the server received) to train "
            "on instead of data.train; its eval split is the held-out set."},
    {.path = "data.max_prompt_len", .type = MT_RKEY_INT, .offset = OFF(data.max_prompt_len), .def = "null",
     .min = 1, .max = 1048576, .flags = MT_RKEY_NULLABLE,
     .only_if = "method=dpo|simpo|orpo|reward|grpo|ppo", .aliases = "max_prompt_length",
     .doc = "Preference and RL methods: prompt tokens kept (the last ones, as TRL); null: only max_seq_len "
            "bounds prompt + completion (the completion's end is cut)."},
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
    {.path = "train.eval_on_start", .type = MT_RKEY_BOOL, .offset = OFF(train.eval_on_start), .def = "false",
     .doc = "Evaluate once before the first step (logged at step 0), as TRL's eval_on_start: the held-out "
            "figures before training."},
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
    {.path = "train.checkpointing", .type = MT_RKEY_ENUM, .offset = OFF(train.checkpointing), .def = "none",
     .names = ckpt_names, .aliases = "gradient_checkpointing activation_checkpointing",
     .doc = "Activation checkpointing: `none` keeps every layer's activations for the backward; `layers` "
            "keeps each layer's input and one layer's activations, and the backward recomputes each layer's "
            "forward before its backward (activation memory of one layer instead of all, about one more "
            "forward per step); `selective` keeps every GEMM and attention output and recomputes only what "
            "costs no GEMM (the RMSNorm outputs, QK-norm's q/k, MLA's normed latents and expanded keys, the "
            "MoE input's jitter and its gather into expert order). Losses and gradients are bit-identical in "
            "all three (docs/performance.md)."},
    {.path = "train.head_lr", .type = MT_RKEY_FLOAT, .offset = OFF(train.head_lr), .def = "null", .min = 0,
     .max = 1, .flags = MT_RKEY_NULLABLE | MT_RKEY_MIN_OPEN, .only_if = "method=reward|ppo",
     .aliases = "score_lr value_lr head_learning_rate",
     .doc = "Peak learning rate of the scalar head (the reward model's score, PPO's value head), its own "
            "parameter group under the same schedule; null: train.lr."},

    {.path = "pref.beta", .type = MT_RKEY_FLOAT, .offset = OFF(pref.beta), .def = "0.1", .min = 0, .max = 1e4,
     .flags = MT_RKEY_MIN_OPEN, .only_if = "method=dpo|simpo|orpo", .doc = "TRL's beta: the strength of the "
     "preference (DPO: the KL penalty's inverse temperature; SimPO: the reward scale; ORPO: the odds-ratio weight)."},
    {.path = "pref.loss_type", .type = MT_RKEY_NAMES, .offset = OFF(pref.loss_type), .def = "[sigmoid]",
     .only_if = "method=dpo", .check = check_loss_type,
     .doc = "TRL's DPO loss_type, one or a list summed with loss_weights: sigmoid, hinge, ipo, exo_pair, "
            "nca_pair, robust, bco_pair, sppo_hard, aot, aot_pair, apo_zero, apo_down, discopop, sft."},
    {.path = "pref.loss_weights", .type = MT_RKEY_FLOATS, .offset = OFF(pref.loss_weights), .def = "[]",
     .min = 0, .max = 1e6, .only_if = "method=dpo", .doc = "One weight per loss_type; empty: 1 each."},
    {.path = "pref.label_smoothing", .type = MT_RKEY_FLOAT, .offset = OFF(pref.label_smoothing), .def = "0",
     .min = 0, .max = 1, .flags = MT_RKEY_MAX_OPEN, .only_if = "method=dpo|simpo",
     .doc = "Probability that a label is flipped (robust, exo_pair, aot; SimPO). TRL 1.16's sigmoid ignores it."},
    {.path = "pref.f_divergence", .type = MT_RKEY_ENUM, .offset = OFF(pref.f_divergence), .def = "reverse_kl",
     .names = fdiv_names, .only_if = "method=dpo", .aliases = "f_divergence_type",
     .doc = "TRL's f_divergence_type (f-DPO), for the losses built on the score difference."},
    {.path = "pref.f_alpha", .type = MT_RKEY_FLOAT, .offset = OFF(pref.f_alpha), .def = "0.5", .min = 0,
     .max = 1e3, .flags = MT_RKEY_MIN_OPEN, .only_if = "method=dpo", .aliases = "f_alpha_divergence_coef",
     .doc = "alpha of alpha_divergence."},
    {.path = "pref.ld_alpha", .type = MT_RKEY_FLOAT, .offset = OFF(pref.ld_alpha), .def = "null", .min = 0,
     .max = 1, .flags = MT_RKEY_NULLABLE, .only_if = "method=dpo",
     .doc = "LD-DPO: completion tokens past the shorter completion count by this factor; null: off."},
    {.path = "pref.discopop_tau", .type = MT_RKEY_FLOAT, .offset = OFF(pref.discopop_tau), .def = "0.05",
     .min = 0, .max = 1e3, .flags = MT_RKEY_MIN_OPEN, .only_if = "method=dpo", .doc = "discopop's tau."},
    {.path = "pref.simpo_gamma", .type = MT_RKEY_FLOAT, .offset = OFF(pref.simpo_gamma), .def = "0.5", .min = 0,
     .max = 1e3, .only_if = "method=simpo", .doc = "SimPO's target reward margin gamma."},
    {.path = "pref.cpo_alpha", .type = MT_RKEY_FLOAT, .offset = OFF(pref.cpo_alpha), .def = "1", .min = 0,
     .max = 1e3, .only_if = "method=simpo", .doc = "Weight of the chosen-completion NLL added to SimPO (TRL's CPO)."},

    {.path = "reference.model", .type = MT_RKEY_ENUM, .offset = OFF(reference.model), .def = "base",
     .names = ref_names, .only_if = "method=dpo|grpo|ppo", .aliases = "ref_model reference_model",
     .doc = "`base`: the base weights with no adapter (the policy's adapter switched off for the pass); "
            "`adapter`: the base with the frozen reference.adapter (an SFT adapter, experts included)."},
    {.path = "reference.adapter", .type = MT_RKEY_PATH, .offset = OFF(reference.adapter), .def_doc = "none",
     .only_if = "method=dpo|grpo|ppo", .aliases = "ref_adapter",
     .doc = "PEFT adapter folder of the frozen reference (reference.model: adapter)."},
    {.path = "reference.cache", .type = MT_RKEY_BOOL, .offset = OFF(reference.cache), .def = "true",
     .only_if = "method=dpo", .aliases = "precompute_ref_log_probs",
     .doc = "Cache the reference log-probs per pair in output.store, keyed by the reference's identity, the "
            "tokenizer, the pair's content hash and the truncation: later runs compute only pairs not seen."},

    {.path = "reward.center_coef", .type = MT_RKEY_FLOAT, .offset = OFF(reward.center_coef), .def = "null",
     .min = 0, .max = 1e3, .flags = MT_RKEY_NULLABLE, .only_if = "method=reward",
     .aliases = "center_rewards_coefficient",
     .doc = "TRL's center_rewards_coefficient: adds c·mean((r⁺ + r⁻)²) so rewards stay centred at 0; null: off."},
    {.path = "reward.model", .type = MT_RKEY_PATH, .offset = OFF(reward.model), .def_doc = "none",
     .only_if = "method=grpo|ppo", .aliases = "reward_model reward_model_path",
     .doc = "A reward model exported by `method: reward` (its adapter folder) that scores completions."},
    {.path = "reward.rules", .type = MT_RKEY_NAMES, .offset = OFF(reward.rules), .def = "[]",
     .only_if = "method=grpo|ppo", .check = check_rule, .aliases = "reward_funcs reward_functions",
     .doc = "Rule rewards, each 0 or 1: `exact` / `contains` (the prompt's answer), `exact:TEXT`, "
            "`contains:TEXT`, `regex:PATTERN` (PCRE2), `length:MIN-MAX` (characters)."},
    {.path = "reward.weights", .type = MT_RKEY_FLOATS, .offset = OFF(reward.weights), .def = "[]", .min = -1e6,
     .max = 1e6, .only_if = "method=grpo|ppo", .aliases = "reward_weights",
     .doc = "One weight per reward function, the reward model first, then the rules; empty: 1 each."},

    {.path = "rollout.num_generations", .type = MT_RKEY_INT, .offset = OFF(rollout.num_generations), .def = "4",
     .min = 1, .max = 1024, .only_if = "method=grpo|ppo",
     .doc = "Completions sampled per prompt (grpo's group, at least 2 there); they share the prompt's KV blocks."},
    {.path = "rollout.max_new_tokens", .type = MT_RKEY_INT, .offset = OFF(rollout.max_new_tokens), .def = "64",
     .min = 1, .max = 1048576, .only_if = "method=grpo|ppo",
     .aliases = "max_completion_length response_length", .doc = "Tokens sampled per completion at most."},
    {.path = "rollout.temperature", .type = MT_RKEY_FLOAT, .offset = OFF(rollout.temperature), .def = "1",
     .min = 0, .max = 100, .flags = MT_RKEY_MIN_OPEN, .only_if = "method=grpo|ppo",
     .doc = "Sampling temperature (log-probs are taken at the same temperature, as TRL)."},
    {.path = "rollout.top_p", .type = MT_RKEY_FLOAT, .offset = OFF(rollout.top_p), .def = "1", .min = 0,
     .max = 1, .flags = MT_RKEY_MIN_OPEN, .only_if = "method=grpo|ppo", .doc = "Nucleus sampling; 1 = off."},
    {.path = "rollout.top_k", .type = MT_RKEY_INT, .offset = OFF(rollout.top_k), .def = "0", .min = 0,
     .max = 1e9, .only_if = "method=grpo|ppo", .doc = "Top-k sampling; 0 = off."},

    {.path = "grpo.loss_type", .type = MT_RKEY_ENUM, .offset = OFF(grpo.loss_type), .def = "dapo",
     .names = grpo_loss_names, .only_if = "method=grpo",
     .doc = "How token losses are averaged: `grpo` (per completion, then over completions), `bnpo` (over the "
            "micro-batch's tokens), `dr_grpo` (over B × max_new_tokens), `dapo` (over the step's tokens)."},
    {.path = "grpo.epsilon", .type = MT_RKEY_FLOAT, .offset = OFF(grpo.epsilon), .def = "0.2", .min = 0, .max = 10,
     .only_if = "method=grpo", .doc = "Lower clipping bound of the importance ratio (1 − epsilon)."},
    {.path = "grpo.epsilon_high", .type = MT_RKEY_FLOAT, .offset = OFF(grpo.epsilon_high), .def = "null",
     .min = 0, .max = 10, .flags = MT_RKEY_NULLABLE, .only_if = "method=grpo",
     .doc = "Upper clipping bound (1 + epsilon_high, DAPO's clip-higher); null: epsilon."},
    {.path = "grpo.beta", .type = MT_RKEY_FLOAT, .offset = OFF(grpo.beta), .def = "0", .min = 0, .max = 1e3,
     .only_if = "method=grpo", .doc = "Weight of the k3 KL to the reference; 0 skips the reference pass."},
    {.path = "grpo.scale_rewards", .type = MT_RKEY_ENUM, .offset = OFF(grpo.scale_rewards), .def = "group",
     .names = scale_names, .only_if = "method=grpo",
     .doc = "Advantages divided by the reward std of the group, of the batch, or not at all."},
    {.path = "grpo.num_iterations", .type = MT_RKEY_INT, .offset = OFF(grpo.num_iterations), .def = "1", .min = 1,
     .max = 1000, .only_if = "method=grpo",
     .doc = "Optimizer steps per rollout batch (μ); above 1 the importance ratio against the sampling policy "
            "matters."},

    {.path = "ppo.kl_coef", .type = MT_RKEY_FLOAT, .offset = OFF(ppo.kl_coef), .def = "0.05", .min = 0, .max = 1e3,
     .only_if = "method=ppo", .doc = "Per-token KL penalty to the reference, subtracted from the reward."},
    {.path = "ppo.kl_estimator", .type = MT_RKEY_ENUM, .offset = OFF(ppo.kl_estimator), .def = "k1",
     .names = kl_names, .only_if = "method=ppo", .doc = "`k1` (log-ratio) or `k3` (non-negative, unbiased)."},
    {.path = "ppo.gamma", .type = MT_RKEY_FLOAT, .offset = OFF(ppo.gamma), .def = "1", .min = 0, .max = 1,
     .only_if = "method=ppo", .doc = "GAE discount."},
    {.path = "ppo.lam", .type = MT_RKEY_FLOAT, .offset = OFF(ppo.lam), .def = "0.95", .min = 0, .max = 1,
     .only_if = "method=ppo", .doc = "GAE lambda."},
    {.path = "ppo.cliprange", .type = MT_RKEY_FLOAT, .offset = OFF(ppo.cliprange), .def = "0.2", .min = 0,
     .max = 10, .only_if = "method=ppo", .doc = "Policy ratio clipping."},
    {.path = "ppo.cliprange_value", .type = MT_RKEY_FLOAT, .offset = OFF(ppo.cliprange_value), .def = "0.2",
     .min = 0, .max = 1e6, .only_if = "method=ppo", .doc = "Value clipping around the rollout's values."},
    {.path = "ppo.vf_coef", .type = MT_RKEY_FLOAT, .offset = OFF(ppo.vf_coef), .def = "0.1", .min = 0, .max = 1e3,
     .only_if = "method=ppo", .doc = "Weight of the value loss."},
    {.path = "ppo.num_ppo_epochs", .type = MT_RKEY_INT, .offset = OFF(ppo.num_ppo_epochs), .def = "4", .min = 1,
     .max = 1000, .only_if = "method=ppo", .doc = "Optimizer steps over each rollout batch."},
    {.path = "ppo.whiten_rewards", .type = MT_RKEY_BOOL, .offset = OFF(ppo.whiten_rewards), .def = "false",
     .only_if = "method=ppo", .doc = "Whiten the per-token rewards before GAE."},

    {.path = "thresholds.dap", .type = MT_RKEY_AUTO_FLOAT, .offset = OFF(thresholds.dap), .def = "auto", .min = 0,
     .max = 1, .aliases = "dap_threshold threshold attention_threshold",
     .doc = "Attention-pruning threshold recorded with the run and exported in the adapter's metadata, for an "
            "inference engine to apply (nothing in moetune applies it yet): `auto` computes "
            "base × (1 − min(H, max_entropy) / max_entropy) from the mean per-sequence token entropy H (bits) of "
            "the training data (docs/data.md); a number fixes it."},
    {.path = "thresholds.experts", .type = MT_RKEY_AUTO_FLOAT, .offset = OFF(thresholds.experts), .def = "off",
     .min = 0, .max = 1, .flags = MT_RKEY_MIN_OPEN | MT_RKEY_OFF, .aliases = "expert_threshold",
     .doc = "Adaptive expert count threshold P exported in the adapter's metadata as `experts`, which "
            "`moetune serve`, `eval` and `generate` apply with that adapter (docs/attention-pruning.md): `off` "
            "exports none; `auto` runs the trained model over a sample of the training rows after training and "
            "takes the median, over tokens and MoE layers, of the share of the router's scores its top-k experts "
            "hold (docs/data.md); a number fixes it."},
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
    const char *have = cond->names[*(const int *)((const char *)r + cond->offset)];
    /* "method=dpo|simpo": any of the alternatives */
    for (const char *p = eq + 1; *p;) {
        size_t len = strcspn(p, "|");
        if (len == strlen(have) && !strncmp(p, have, len)) return true;
        p += len;
        if (*p == '|') p++;
    }
    return false;
}
