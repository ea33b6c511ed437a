/* chat.h — the chat room's one public header: chat templates (the Jinja2 subset real
 * templates use) rendered as transformers' apply_chat_template does. Uses tokenizer/ for the
 * template and special tokens a tokenizer folder carries. */
#ifndef MT_CHAT_H
#define MT_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "common/common.h"
#include "tokenizer/tokenizer.h"

/* ---- chat templates (the Jinja2 subset real chat templates use) ---- */

typedef struct mt_chat_message {
    const char *role;    /* "system", "user", "assistant", ... */
    const char *content;
} mt_chat_message;

/* Renders the tokenizer's chat template like transformers'
 * apply_chat_template(messages, tokenize=False, add_generation_prompt=...), with the special
 * tokens of tokenizer_config.json (bos_token, eos_token, ...) defined as transformers passes them. MT_ERR_NOT_FOUND when the tokenizer has no template;
 * a template error (syntax, raise_exception) names the template line. *out is malloc'ed. */
mt_status mt_chat_render(const mt_tokenizer *tok, const mt_chat_message *msgs, size_t n_msgs,
                         bool add_generation_prompt, char **out, size_t *len, mt_error *err);

#endif
