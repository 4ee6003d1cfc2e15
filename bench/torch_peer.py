#!/usr/bin/env python3
"""The peer for sae_bench: the same sparse autoencoder workload in PyTorch.

ReLU + L1 SAE (SAELens "standard" forward: f = relu((x - b_dec) W_enc + b_enc),
x_hat = f W_dec + b_dec), Adam, decoder rows kept at unit norm, on the CPU with
the same thread count, batch and shapes as sae_bench. Prints key=value lines:

  torch_train_rows_per_s, torch_encode_rows_per_s

Needs Debian's python3-torch (apt-get install python3-torch); run with
/usr/bin/python3. sae_bench --peer=bench/torch_peer.py runs it in the same run.
"""
import argparse
import time

import torch


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d_in", type=int, default=784)
    p.add_argument("--d_hidden", type=int, default=4096)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--encode_seconds", type=float, default=2.0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    d_in, d_h, b = a.d_in, a.d_hidden, a.batch
    w_dec = torch.nn.Parameter(torch.rand(d_h, d_in) - 0.5)
    with torch.no_grad():
        w_dec.div_(w_dec.norm(dim=1, keepdim=True))
    w_enc = torch.nn.Parameter(w_dec.detach().t().clone())
    b_enc = torch.nn.Parameter(torch.zeros(d_h))
    b_dec = torch.nn.Parameter(torch.zeros(d_in))
    params = [w_enc, w_dec, b_enc, b_dec]
    opt = torch.optim.Adam(params, lr=1e-3)
    data = torch.rand(b * 8, d_in)
    l1 = 1e-3

    def step(x):
        f = torch.relu((x - b_dec) @ w_enc + b_enc)
        x_hat = f @ w_dec + b_dec
        loss = (x_hat - x).pow(2).sum(-1).mean() + l1 * f.sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # keep decoder rows on the unit sphere
            w_dec.grad -= (w_dec.grad * w_dec).sum(1, keepdim=True) * w_dec
        opt.step()
        with torch.no_grad():
            w_dec.div_(w_dec.norm(dim=1, keepdim=True))
        return loss

    skip = 3
    start = None
    for s in range(a.steps):
        if s == skip:
            start = time.perf_counter()
        i = (s % 8) * b
        step(data[i:i + b])
    train = (a.steps - skip) * b / (time.perf_counter() - start)

    x = data[:b]
    with torch.no_grad():
        torch.relu((x - b_dec) @ w_enc + b_enc)
        calls, start = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - start < a.encode_seconds:
            torch.relu((x - b_dec) @ w_enc + b_enc)
            calls += 1
        encode = calls * b / (time.perf_counter() - start)

    print(f"torch_version={torch.__version__}")
    print(f"torch_threads={torch.get_num_threads()}")
    print(f"torch_train_rows_per_s={train:.1f}")
    print(f"torch_encode_rows_per_s={encode:.1f}")


if __name__ == "__main__":
    main()
