"""The optimizer step: AdamW with the foreach kernels (distillkit before 2026-11-23) vs the fused kernel (now).

    python bench/bench_optim.py --threads 1            # the 23-layer pruned SmolLM2-135M student's parameters
    python bench/bench_optim.py --layers 30 --device cuda

Parameters are those of a randomly initialised SmolLM2-135M-shaped model (tied embedding counted once), with
random gradients; the same betas/lr as `distillkit train`. Runs alternate foreach, fused, foreach, fused, ...
so machine noise falls on both; each run is `--steps` steps after one untimed step (state allocation).
The last line checks that both give the same parameters after three steps from the same start.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=23, help="decoder layers (23 = the demo's pruned student)")
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from bench_train import smollm2_shaped  # this script's folder is on sys.path

    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [p.shape for p in smollm2_shaped(args.vocab, args.layers).parameters()]
    cuda = args.device.startswith("cuda")

    def params() -> list[torch.nn.Parameter]:
        g = torch.Generator().manual_seed(0)
        ps = [torch.nn.Parameter((torch.randn(s, generator=g) * 0.02).to(args.device)) for s in shapes]
        for p in ps:
            p.grad = (torch.randn(p.shape, generator=g) * 1e-3).to(args.device)
        return ps

    def make(ps, kernel: str):
        return torch.optim.AdamW(ps, lr=2e-4, betas=(0.9, 0.95), weight_decay=0.0, **{kernel: True})

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {"foreach": [], "fused": []}
    for _ in range(args.repeats):
        for kernel in times:
            opt = make(params(), kernel)
            opt.step()
            sync()
            t = time.perf_counter()
            for _ in range(args.steps):
                opt.step()
            sync()
            times[kernel].append((time.perf_counter() - t) / args.steps)
    n = sum(s.numel() for s in shapes)
    print(f"AdamW step, {n / 1e6:.1f} M parameters ({len(shapes)} tensors), device={args.device} "
          f"threads={torch.get_num_threads()}, {args.steps} steps per run")
    for k, v in times.items():
        print(f"{k:>8}: {min(v):.4f} s/step (best of {args.repeats}; all: " + ", ".join(f"{t:.4f}" for t in v) + ")")
    print(f"fused / foreach time: {min(times['fused']) / min(times['foreach']):.3f}")
    a, b = params(), params()
    oa, ob = make(a, "foreach"), make(b, "fused")
    for _ in range(3):
        oa.step()
        ob.step()
    diff = max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(a, b))
    print(f"max |foreach - fused| after 3 steps: {diff:.1e}")


if __name__ == "__main__":
    main()
