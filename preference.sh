#!/usr/bin/env bash
# preference.sh — preference tuning end to end on this machine's medical text (docs/preference.md):
# definition pairs (a term, its true definition, another term's) into the store, DPO on them,
# a reward model on them, then GRPO and PPO on the terms with a rule reward; each run evaluates
# on held-out data before its first step and after its last, and the table at the end prints both.
set -euo pipefail
cd "$(dirname "$0")"
start=$SECONDS
MOETUNE_TARGET=moetune scripts/setup.sh build
mt=build/moetune
db=runs/moetune.db
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
mkdir -p data models runs adapters

step "1. the tiny base (scripts/tiny-base.sh; made once, shared with quickstart.sh)"
scripts/tiny-base.sh

step "2. definition pairs from the medical corpus, into the store as the dataset medical-defs"
$mt data medical-pairs data/medical-pairs.jsonl
$mt pairs --store $db import data/medical-pairs.jsonl --dataset medical-defs --eval-fraction 0.05
$mt pairs --store $db stats --dataset medical-defs --tokenizer models/tiny-base/tokenizer.json | head -12

for run in medical-dpo medical-reward medical-grpo medical-ppo; do
  step "3. $run (recipes/$run.yaml)"
  rm -rf runs/$run adapters/$run
  $mt train recipes/$run.yaml
done

step "4. held out, before the first step and after the last (from $db)"
# the newest run of each name: its first and last value of each held-out figure
sqlite3 -column -header $db "
  WITH last_run AS (SELECT name, max(id) AS id FROM runs WHERE name LIKE 'medical-%' GROUP BY name),
  m AS (SELECT r.name AS run, x.name AS figure, x.step, x.value FROM metrics x JOIN last_run r ON r.id = x.run_id
        WHERE x.name IN ('eval_rewards/accuracies', 'eval_rewards/margins', 'eval_accuracy', 'eval_reward',
                         'eval_completions/mean_length'))
  SELECT run, figure,
         printf('%.3f', (SELECT value FROM m m2 WHERE m2.run = m.run AND m2.figure = m.figure ORDER BY step LIMIT 1)) AS before,
         printf('%.3f', (SELECT value FROM m m2 WHERE m2.run = m.run AND m2.figure = m.figure ORDER BY step DESC LIMIT 1)) AS after,
         max(step) AS at_step
  FROM m GROUP BY run, figure ORDER BY run, figure;"
echo
echo "KL to the base during GRPO (kl) and PPO (objective/kl), first and last step:"
sqlite3 -column -header $db "
  WITH last_run AS (SELECT name, max(id) AS id FROM runs WHERE name IN ('medical-grpo', 'medical-ppo') GROUP BY name)
  SELECT r.name AS run, x.name AS figure,
         printf('%.4f', (SELECT value FROM metrics y WHERE y.run_id = r.id AND y.name = x.name ORDER BY step LIMIT 1)) AS first,
         printf('%.4f', (SELECT value FROM metrics y WHERE y.run_id = r.id AND y.name = x.name ORDER BY step DESC LIMIT 1)) AS last
  FROM last_run r JOIN metrics x ON x.run_id = r.id WHERE x.name IN ('kl', 'objective/kl') GROUP BY r.name, x.name;"

step "done in $((SECONDS - start)) s"
echo "runs: $mt runs --store $db list;  adapters: adapters/medical-{dpo,reward,grpo,ppo}/"
