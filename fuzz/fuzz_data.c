/* fuzz_data.c — libFuzzer target for the training-data reader: the first byte picks the
 * recipe's data.format (auto, text, prompt_completion, messages, plain) and whether prompts are
 * masked; the rest is the JSONL (or plain text) file, tokenized with a committed fixture
 * tokenizer. Documents that load have ids inside the vocabulary, 0/1 loss flags and ordered
 * offsets; a refusal names the file. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/data-impl.h"
#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static mt_tokenizer *data_tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    mt_error err = {0};
    if (mt_tokenizer_load(&data_tok, fuzz_fixture("tokenizers/deepseek_v3"), &err) != MT_OK) {
        fprintf(stderr, "fuzz_data: %s\n", err.msg);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    if (!data_tok) LLVMFuzzerInitialize(NULL, NULL);
    static const mt_recipe_format formats[] = {MT_RECIPE_FORMAT_AUTO, MT_RECIPE_FORMAT_TEXT,
                                               MT_RECIPE_FORMAT_PROMPT_COMPLETION, MT_RECIPE_FORMAT_MESSAGES,
                                               MT_RECIPE_FORMAT_PLAIN};
    mt_recipe_format fmt = formats[data[0] % 5];
    bool mask = (data[0] / 5) & 1;
    char path[600];
    snprintf(path, sizeof path, "%s/%s", fuzz_scratch(), fmt == MT_RECIPE_FORMAT_PLAIN ? "doc.txt" : "data.jsonl");
    fuzz_write(path, data + 1, size - 1);
    char *paths[] = {path};
    mt_recipe_list list = {1, paths};
    mt_docs docs;
    memset(&docs, 0, sizeof docs);
    mt_data_source src[1];
    mt_error err = {0};
    mt_status st = mt_data_load(&list, fmt, mask, data_tok, "fuzz", NULL, &docs, src, &err);
    if (st != MT_OK) {
        if (!strstr(err.msg, path)) {
            fprintf(stderr, "a refusal that does not name the file: %s\n", err.msg);
            abort();
        }
        mt_docs_free(&docs);
        return 0;
    }
    int V = mt_tokenizer_vocab_size(data_tok);
    if (docs.n_docs < 0 || docs.n_tokens < 0 || (docs.n_docs > 0 && !docs.doc_off)) abort();
    for (int64_t i = 0; i < docs.n_tokens; i++)
        if (docs.ids[i] < 0 || docs.ids[i] >= V || docs.learn[i] > 1) abort();
    for (int64_t d = 0; d < docs.n_docs; d++)
        if (docs.doc_off[d] > docs.doc_off[d + 1] || docs.doc_off[d + 1] > docs.n_tokens) abort();
    mt_docs_free(&docs);
    return 0;
}
