"""kernels_route.py — dumps routing decisions of transformers' own router modules (Mixtral,
DeepSeek-V2 group_limited_greedy, DeepSeek-V3 noaux_tc) for tests/test_kernels.c to match.

Run: /work/venv/bin/python tests/reference/kernels_route.py  (writes
tests/fixtures/kernels/route_hf.txt). The router weight is the identity, so the hidden
states given to each router are its logits. Format, per case: a header line
`case NAME n_tok E k scoring method n_group topk_group norm scale has_bias`, a `bias` line
when has_bias, then one line per token: E logits, k expert indices, k weights (HF order)."""
import os

import torch
from transformers.models.deepseek_v2.configuration_deepseek_v2 import DeepseekV2Config
from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2TopkRouter
from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter
from transformers.models.mixtral.configuration_mixtral import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "kernels", "route_hf.txt")
N_TOK = 24


def fmt(xs):
    return " ".join(repr(float(x)) if isinstance(x, float) else str(x) for x in xs)


def dump(f, name, router, E, k, scoring, method, n_group, topk_group, norm, scale, bias, gen):
    with torch.no_grad():
        router.weight.copy_(torch.eye(E))
        if bias is not None:
            router.e_score_correction_bias.copy_(bias)
        logits = torch.randn(N_TOK, E, generator=gen) * 2.0
        _, w, idx = router(logits)
    f.write(f"case {name} {N_TOK} {E} {k} {scoring} {method} {n_group} {topk_group} {norm} {scale!r} "
            f"{int(bias is not None)}\n")
    if bias is not None:
        f.write("bias " + fmt(bias.tolist()) + "\n")
    for t in range(N_TOK):
        f.write(fmt(logits[t].tolist()) + " | " + fmt(idx[t].tolist()) + " | " + fmt(w[t].tolist()) + "\n")


def main():
    gen = torch.Generator().manual_seed(20240611)
    with open(OUT, "w") as f:
        cfg = MixtralConfig(hidden_size=8, num_attention_heads=4, num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2)
        dump(f, "mixtral", MixtralTopKRouter(cfg), 8, 2, "softmax", "greedy", 0, 0, "sum", 1.0, None, gen)

        cfg = DeepseekV2Config(hidden_size=16, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=16, num_experts_per_tok=4, n_group=4,
                               topk_group=2, topk_method="group_limited_greedy", routed_scaling_factor=2.5)
        dump(f, "deepseek_v2_group_limited", DeepseekV2TopkRouter(cfg), 16, 4, "softmax", "group_limited", 4, 2,
             "none", 2.5, None, gen)

        for norm, scale in (("sum_eps", 2.5), ("none", 1.5)):
            cfg = DeepseekV3Config(hidden_size=16, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=16, num_experts_per_tok=4, n_group=4,
                                   topk_group=2, routed_scaling_factor=scale, norm_topk_prob=(norm == "sum_eps"))
            # biases mostly below −sigmoid: biased scores under 0 in kept groups make transformers' −inf mask
            # choose differently from a 0 mask on several tokens (checked when this was written)
            bias = torch.randn(16, generator=gen) * 0.5 - 0.9
            dump(f, f"deepseek_v3_noaux_tc_{norm}", DeepseekV3TopkRouter(cfg), 16, 4, "sigmoid", "noaux_tc", 4, 2,
                 norm, scale, bias, gen)


if __name__ == "__main__":
    main()
