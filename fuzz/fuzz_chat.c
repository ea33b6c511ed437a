/* fuzz_chat.c — libFuzzer target for the chat template engine: the input is template text,
 * lexed, parsed and rendered against a fixed conversation (system, user, assistant with a
 * tool call, tool, user) and tool list, under lowered step and memory limits so that every
 * input finishes quickly. Success gives a NUL-terminated string; failure gives a message. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/jinja-impl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char chat_vars[] =
    "{\"messages\": ["
    "{\"role\": \"system\", \"content\": \"You are terse.\"},"
    "{\"role\": \"user\", \"content\": \"Weather in Z\\u00fcrich? \\ud83d\\ude00\"},"
    "{\"role\": \"assistant\", \"content\": \"<think>\\nlook it up\\n</think>\\n\\n\", \"tool_calls\": ["
    "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Z\\u00fcrich\", \"days\": 2}}}]},"
    "{\"role\": \"tool\", \"content\": \"{\\\"temp\\\": 21.5}\"},"
    "{\"role\": \"user\", \"content\": \"  Thanks!  \"}],"
    "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather\","
    "\"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}],"
    "\"documents\": null, \"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\","
    "\"pad_token\": \"<pad>\"}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const jj_limits lim = {.max_steps = 200000, .max_arena = (size_t)64 << 20};
    char *out = NULL;
    size_t len = 0;
    mt_error err = {0};
    mt_status s = mt_jinja_render((const char *)data, size, chat_vars, sizeof chat_vars - 1, &lim, &out, &len, &err);
    if (s != MT_OK) {
        if (out || !err.msg[0]) abort();
        return 0;
    }
    if (!out || out[len] != '\0') abort();
    free(out);
    return 0;
}
