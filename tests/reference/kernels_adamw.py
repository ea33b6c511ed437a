"""kernels_adamw.py — ten torch.optim.AdamW steps on 64 parameters, for tests/test_kernels.c.

Run: /work/venv/bin/python tests/reference/kernels_adamw.py  (writes
tests/fixtures/kernels/adamw_torch.txt). Format: a line `lr beta1 beta2 eps weight_decay
steps n`, then the initial parameters, one gradient line per step, and the final
parameters, exp_avg and exp_avg_sq, one line each, floats written exactly (repr of float32)."""
import os

import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "kernels", "adamw_torch.txt")


def line(t):
    return " ".join(repr(float(x)) for x in t.tolist()) + "\n"


def main():
    torch.manual_seed(7)
    n, steps = 64, 10
    lr, b1, b2, eps, wd = 3e-3, 0.9, 0.95, 1e-8, 0.05
    p0 = torch.randn(n)
    grads = torch.randn(steps, n) * torch.rand(steps, 1)
    p = torch.nn.Parameter(p0.clone())
    opt = torch.optim.AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    st = opt.state[p]
    with open(OUT, "w") as f:
        f.write(f"{lr!r} {b1!r} {b2!r} {eps!r} {wd!r} {steps} {n}\n")
        f.write(line(p0))
        for g in grads:
            f.write(line(g))
        f.write(line(p.detach()))
        f.write(line(st["exp_avg"]))
        f.write(line(st["exp_avg_sq"]))


if __name__ == "__main__":
    main()
