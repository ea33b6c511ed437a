/* rewards-impl.h — the rewards that score GRPO's and PPO's completions inside finetune/: rule
 * specs as recipes write them ("contains", "regex:^The", "length:10-200") parsed into rl/'s
 * rules. */
#ifndef MT_FINETUNE_REWARDS_IMPL_H
#define MT_FINETUNE_REWARDS_IMPL_H

#include <stdbool.h>
#include <stddef.h>

#include "rl/rl.h"

/* Parses one reward.rules entry. The rule's target points into spec (for exact:/contains:/
 * regex:) or is NULL (the prompt's own answer). Returns false with a reason. */
bool mt_reward_rule_spec_parse(const char *spec, mt_reward_rule *out, char *why, size_t cap);

#endif
