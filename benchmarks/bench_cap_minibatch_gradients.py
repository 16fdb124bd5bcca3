"""Issue 17.3: can several small mini-batch gradients come from one pass faster than one backward each?

Compares, on a ViT built from DeiT-tiny's config (random weights, random 224 px images and labels, one torch thread):

* ``loop``: what the gradient engine does today with ``grad_batch_size=1`` — one forward and one
  ``torch.autograd.grad`` w.r.t. the prunable Linear weights per image;
* ``merged``: one forward of all ``k`` images, one backward w.r.t. the Linear layers' *outputs* (no weight
  gradients), and the per-image weight gradients as one batched product per layer, ``Σ_t g_tᵀ x_t`` (the
  activation-gradient trick per-sample-gradient libraries use; exact for losses that are means over images).

Prints the largest relative difference of the two sets of gradients and the times, interleaved.

    python benchmarks/bench_cap_minibatch_gradients.py [--images 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import transformers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768, image_size=224, patch_size=16, num_labels=1000)
    model = transformers.ViTForImageClassification(config).eval()
    layers = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "classifier" not in n]
    weights = [m.weight for m in layers]
    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    k = args.images
    images, labels = torch.randn(k, 3, 224, 224), torch.randint(0, 1000, (k,))

    def loop():
        return [torch.autograd.grad(model(pixel_values=images[i : i + 1], labels=labels[i : i + 1]).loss, weights) for i in range(k)]

    def merged():
        inputs, outputs = {}, {}

        def hook(module, args, output):
            inputs[module], outputs[module] = args[0].detach(), output

        handles = [m.register_forward_hook(hook) for m in layers]
        loss = model(pixel_values=images, labels=labels).loss  # mean over k images: each image's gradient is k × its share
        for h in handles:
            h.remove()
        grads = torch.autograd.grad(loss, [outputs[m] for m in layers])
        return [torch.bmm(g.reshape(k, -1, g.shape[-1]).transpose(1, 2), inputs[m].reshape(k, -1, inputs[m].shape[-1])) * k for m, g in zip(layers, grads)]

    a, b = loop(), merged()
    diff = max(float((a[i][j] - b[j][i]).abs().max() / a[i][j].abs().max()) for i in range(k) for j in range(len(weights)))
    print(f"# {os.uname().machine}, torch {torch.__version__}, 1 thread, load {[round(v, 2) for v in os.getloadavg()]}; max relative difference {diff:.2e}")
    for _ in range(args.rounds):
        start = time.perf_counter()
        loop()
        t_loop = time.perf_counter() - start
        start = time.perf_counter()
        merged()
        t_merged = time.perf_counter() - start
        print(f"loop {t_loop:.2f} s   merged {t_merged:.2f} s   loop / merged {t_loop / t_merged:.2f}")


if __name__ == "__main__":
    main()
