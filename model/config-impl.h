/* config-impl.h — model/'s private config.json entry point for text already in memory: the
 * fuzzer and the tests feed the parser bytes without touching the disk. Not part of the public
 * API (model/model.h). */
#ifndef MT_CONFIG_IMPL_H
#define MT_CONFIG_IMPL_H

#include "model/model.h"

/* Parses `len` bytes of config.json text (need not be NUL-terminated) with every check
 * mt_config_load applies; `origin` names it in error messages. On failure *cfg is unchanged. */
mt_status mt_config_parse(mt_config *cfg, const char *text, size_t len, const char *origin, mt_error *err);

#endif
