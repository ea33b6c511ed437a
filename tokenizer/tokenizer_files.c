/* tokenizer_files.c — the files of a tokenizer folder: the byte-level BPE with no merges that
 * `moetune init` gives a model by default, and copying a tokenizer's files into a model folder.
 * Both write through mt_write_file_atomic. */
#include "tokenizer-impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Byte b's character in GPT-2's byte-level alphabet (tk_byte_to_cp), as UTF-8 inside a JSON
 * string: '"' and '\\' escaped. */
static size_t byte_token(int b, char *out) {
    uint32_t cp = tk_byte_to_cp[b];
    size_t k = 0;
    if (cp == '"' || cp == '\\') out[k++] = '\\';
    k += tk_utf8_encode(cp, out + k);
    out[k] = '\0';
    return k;
}

#define BOS_TOKEN "<|bos|>"
#define EOS_TOKEN "<|eos|>"

mt_status mt_tokenizer_write_bytes(const char *dir, int max_len, mt_error *err) {
    size_t cap = 64 * 1024, n = 0;
    char *s = mt_xmalloc(cap);
#define OUT(...) n += (size_t)snprintf(s + n, cap - n, __VA_ARGS__)
    OUT("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [\n");
    const char *special[2] = {BOS_TOKEN, EOS_TOKEN};
    for (int i = 0; i < 2; i++)
        OUT("    {\"id\": %d, \"content\": \"%s\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, "
            "\"normalized\": false, \"special\": true}%s\n",
            256 + i, special[i], i ? "" : ",");
    OUT("  ],\n  \"normalizer\": null,\n");
    OUT("  \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, "
        "\"use_regex\": true},\n");
    OUT("  \"post_processor\": {\"type\": \"TemplateProcessing\", "
        "\"single\": [{\"SpecialToken\": {\"id\": \"%s\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], "
        "\"pair\": [{\"SpecialToken\": {\"id\": \"%s\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}, "
        "{\"Sequence\": {\"id\": \"B\", \"type_id\": 1}}], "
        "\"special_tokens\": {\"%s\": {\"id\": \"%s\", \"ids\": [256], \"tokens\": [\"%s\"]}}},\n",
        BOS_TOKEN, BOS_TOKEN, BOS_TOKEN, BOS_TOKEN, BOS_TOKEN);
    OUT("  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true},\n");
    OUT("  \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, \"continuing_subword_prefix\": null, "
        "\"end_of_word_suffix\": null, \"fuse_unk\": false, \"byte_fallback\": false, \"ignore_merges\": false,\n");
    OUT("    \"vocab\": {");
    for (int b = 0; b < 256; b++) {
        char tok[8];
        byte_token(b, tok);
        OUT("%s\"%s\": %d", b ? ", " : "", tok, b);
    }
    OUT("},\n    \"merges\": []\n  }\n}\n");
#undef OUT
    MT_ASSERT(n < cap);
    char path[4096];
    mt_status st = MT_OK;
    if (!mt_path_join(path, sizeof path, dir, "tokenizer.json"))
        st = mt_error_set(err, MT_ERR_INVALID, "%s: path too long", dir);
    if (!st) st = mt_write_file_atomic(path, s, n, err);
    if (!st) {
        n = (size_t)snprintf(s, cap,
                             "{\n  \"bos_token\": \"%s\",\n  \"eos_token\": \"%s\",\n  \"add_bos_token\": true,\n"
                             "  \"clean_up_tokenization_spaces\": false,\n  \"model_max_length\": %d,\n"
                             "  \"tokenizer_class\": \"PreTrainedTokenizerFast\"\n}\n",
                             BOS_TOKEN, EOS_TOKEN, max_len);
        if (!mt_path_join(path, sizeof path, dir, "tokenizer_config.json"))
            st = mt_error_set(err, MT_ERR_INVALID, "%s: path too long", dir);
        else
            st = mt_write_file_atomic(path, s, n, err);
    }
    free(s);
    return st;
}

mt_status mt_tokenizer_copy_files(const char *src, const char *dir, mt_error *err) {
    static const char *files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"};
    char from_dir[4096];
    if (mt_is_dir(src)) {
        snprintf(from_dir, sizeof from_dir, "%s", src);
    } else {
        snprintf(from_dir, sizeof from_dir, "%s", src);
        char *slash = strrchr(from_dir, '/');
        if (slash)
            *slash = '\0';
        else
            snprintf(from_dir, sizeof from_dir, ".");
    }
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char in[4096], out[4096];
        if (i == 0 && !mt_is_dir(src))
            snprintf(in, sizeof in, "%s", src);
        else if (!mt_path_join(in, sizeof in, from_dir, files[i]))
            return mt_error_set(err, MT_ERR_INVALID, "%s: path too long", from_dir);
        if (i > 0 && !mt_path_exists(in)) continue;
        char *data = NULL;
        size_t len = 0;
        mt_status st = mt_read_file(in, &data, &len, err);
        if (st) return st;
        if (!mt_path_join(out, sizeof out, dir, files[i])) {
            free(data);
            return mt_error_set(err, MT_ERR_INVALID, "%s: path too long", dir);
        }
        st = mt_write_file_atomic(out, data, len, err);
        free(data);
        if (st) return st;
    }
    return MT_OK;
}
