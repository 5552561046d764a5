"""SCSA speed: this project's module against the step-by-step computation, side by side in one run.

The step-by-step version (kept here, not in the library) is the computation as the paper writes it: four separate
depthwise 1-D convolutions per strip, concatenation, and an explicit (C/heads) x (C/heads) attention matrix.
Both modules share the same weights; outputs and input gradients are checked equal before timing.

Measured: forward + backward at the four ResNet-50 stage shapes (batch 32, paper defaults), median of repeats after
warm-up, on ``--threads`` threads (default 2). Memory: bytes autograd keeps for backward (the activation memory a
training step holds), and the peak of tensor memory allocated during one forward + backward step (on CUDA the
allocator's peak; on CPU from the profiler's allocation events).

    python bench/scsa_speed.py [--threads 2] [--repeats 7] [--batch 32] [--device cpu]

``--backbone NAME --resolution PX`` times instead the SCSA of every distinct slot shape of that backbone (the
paper's slot, after the block's 3x3 or depthwise convolution) at that input size, beside the block it sits in:
per shape our SCSA, the step-by-step one, the block's own layers (the timm block, without SCSA), each forward +
backward at ``--batch`` and at inference (eval, no grad, batch 1), and SCSA's FLOPs against the block's (fvcore, at
batch 1), so that the distance to "costs what its FLOPs say" is visible per shape.

    python bench/scsa_speed.py --backbone mobilenetv2_100 --resolution 48 [--batch 32] [--threads 1]

``--profile`` (with ``--backbone``) says instead what SCSA's forward + backward spends its time on at each shape:
the milliseconds per step under the profiler, the aten ops dispatched per step (outermost calls), the share of
the step spent outside any recorded op (Python and autograd bookkeeping), and the ops with the most self time
with their share and calls per step. The profiler slows small ops, so the shares are the measure, not the times.

    python bench/scsa_speed.py --backbone resnet50 --resolution 48 --threads 1 --channels-last --profile

``--channels-last`` gives every module its input (and the block its weights) channels-last, the memory format a
proxy trains in (the ``default`` preset): SCSA's passes over the map then run in that layout.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from space.scsa import SCSA  # noqa: E402

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]


class StepByStepSCSA(nn.Module):
    """The paper's computation written out op by op (reference for timing only)."""

    def __init__(self, fast: SCSA) -> None:
        super().__init__()
        self.fast = fast  # borrow parameters so both compute with identical weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.fast
        b, c, h, w = x.shape
        x_h, x_w = x.mean(dim=3), x.mean(dim=2)
        hs, ws = torch.chunk(x_h, m.groups, dim=1), torch.chunk(x_w, m.groups, dim=1)
        conv_h = [conv(part) for conv, part in zip(m.dwc, hs)]
        conv_w = [conv(part) for conv, part in zip(m.dwc, ws)]
        a_h = torch.sigmoid(m.norm_h(torch.cat(conv_h, dim=1))).view(b, c, h, 1)
        a_w = torch.sigmoid(m.norm_w(torch.cat(conv_w, dim=1))).view(b, c, 1, w)
        xs = x * a_h * a_w
        # the authors' AvgPool2d(window) fails on maps smaller than the window; ours clamps it to the map, and so does
        # this reference, so that the small shapes of the mobile backbones can be timed at all
        win = (min(m.window, h), min(m.window, w))
        y = F.avg_pool2d(xs, win, win) if m.window > 0 else xs.mean((2, 3), keepdim=True)
        y = m.norm(y)
        q = y * m.qkv_weight[0].view(1, c, 1, 1)
        k = y * m.qkv_weight[1].view(1, c, 1, 1)
        v = y * m.qkv_weight[2].view(1, c, 1, 1)
        hd = c // m.heads
        q, k, v = (t.reshape(b, m.heads, hd, -1) for t in (q, k, v))
        attn = (q @ k.transpose(-2, -1) * hd**-0.5).softmax(dim=-1)  # explicit C x C matrix
        z = (attn @ v).reshape(b, c, *y.shape[-2:]).mean((2, 3), keepdim=True)
        return torch.sigmoid(z) * xs


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of tensors autograd saves for backward during one forward (distinct storages)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(seen.values())


def time_pair(modules: list[nn.Module], x: torch.Tensor, repeats: int, warmup: int = 2) -> list[float]:
    """Median fwd+bwd seconds of each module; the modules alternate inside every repeat so that both see the
    same machine state (a shared machine drifts by tens of percent between back-to-back loops)."""

    def step(module: nn.Module) -> float:
        x.grad = None
        module.zero_grad(set_to_none=True)  # as a training step's optimizer does: no accumulation into old grads
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        module(x).sum().backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(warmup):
        for m in modules:
            step(m)
    times: list[list[float]] = [[] for _ in modules]
    for _ in range(repeats):
        for m, ts in zip(modules, times):
            ts.append(step(m))
    return [statistics.median(ts) for ts in times]


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """The profiler's native library logs its start and stop on file descriptor 2; keep the table clean."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_mib(module: nn.Module, x: torch.Tensor) -> float:
    """MiB of tensor memory allocated at the peak of one forward + backward step, beyond what was allocated before
    it (the output, intermediates and x.grad included); NaN where it cannot be measured."""
    x.grad = None
    if x.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        module(x).sum().backward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    # CPU has no allocator statistics; the profiler records every allocation with the running total it leaves.
    try:
        with _native_stderr_silenced(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        ) as prof:
            module(x).sum().backward()
        events = []
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            event = stack.pop()
            stack.extend(event.children)
            if hasattr(event.extra_fields, "total_allocated"):
                events.append((event.start_time_ns, event.extra_fields.alloc_size, event.extra_fields.total_allocated))
    except (AttributeError, RuntimeError):  # private profiler structures moved: report nothing rather than guess
        return float("nan")
    if not events:
        return float("nan")
    events.sort()
    base = events[0][2] - events[0][1]
    return (max(total for _, _, total in events) - base) / 2**20


def block_shapes(backbone: str, resolution: int) -> list[tuple[int, int, nn.Module, tuple[int, ...]]]:
    """Per distinct SCSA shape of ``backbone``'s mid slots at ``resolution``: channels, map side, the (plain) timm
    block it sits in, and that block's input shape at batch 1."""
    import timm

    from space.backbones import input_size_kwargs, slots

    model = timm.create_model(backbone, pretrained=False, num_classes=10,
                              **input_size_kwargs(backbone, resolution)).eval()
    seen: dict[tuple[int, int], str] = {}
    for stage in slots(backbone, resolution):
        for slot in stage:
            if slot.position == "mid":
                seen.setdefault((slot.channels, slot.height), slot.block_path)
    inputs: dict[str, tuple[int, ...]] = {}

    def record(path: str):
        def hook(_module: nn.Module, args: tuple) -> None:  # returns None: the block's input is left as it is
            inputs.setdefault(path, tuple(args[0].shape))
        return hook

    hooks = [model.get_submodule(path).register_forward_pre_hook(record(path)) for path in set(seen.values())]
    with torch.no_grad():
        model(torch.randn(1, 3, resolution, resolution))
    for h in hooks:
        h.remove()
    return [(c, side, model.get_submodule(path).train(), inputs[path]) for (c, side), path in seen.items()]


def infer_ms(modules: list[nn.Module], xs: list[torch.Tensor], repeats: int) -> list[float]:
    """Median inference milliseconds (eval, no grad) of two modules on their inputs, interleaved (the latency
    objective's own ``interleaved_times``)."""
    from evaluators.latency import interleaved_times

    (a, b), (xa, xb) = modules, xs
    a.eval(), b.eval()
    with torch.inference_mode():
        times = interleaved_times(lambda: a(xa), lambda: b(xb), repeats, warmup=2)
    a.train(), b.train()
    return [statistics.median(ts) for ts in times]


def backbone_rows(backbone: str, resolution: int, batch: int, repeats: int, dev: torch.device,
                  fmt: torch.memory_format = torch.contiguous_format) -> None:
    """The per-shape table of ``--backbone`` (see the module docstring)."""
    from evaluators.flops import count_module

    print(f"{backbone} at {resolution} px{', channels-last' * (fmt == torch.channels_last)}: SCSA at the mid slot "
          f"of each distinct shape; fwd+bwd at batch {batch}, inference at batch 1 (ms, median of {repeats}); "
          "GFLOPs at batch 1")
    print(f"{'shape':>12} {'ours':>8} {'step':>8} {'block':>8} {'ours/blk':>8} | {'inf ours':>8} {'inf blk':>8} "
          f"{'ratio':>6} | {'MFLOPs scsa/blk':>16} {'ratio':>6}")
    for c, side, block, in_shape in block_shapes(backbone, resolution):
        fast = SCSA(c).to(dev)
        slow = StepByStepSCSA(fast)
        block = block.to(dev, memory_format=fmt)
        x = torch.randn(batch, c, side, side, device=dev).contiguous(memory_format=fmt).requires_grad_()
        xb = torch.randn(batch, *in_shape[1:], device=dev).contiguous(memory_format=fmt).requires_grad_()
        t_fast, t_slow = time_pair([fast, slow], x, repeats)
        (t_block,) = time_pair([block], xb, repeats)
        one, one_b = x[:1].detach(), xb[:1].detach()
        i_fast, i_block = infer_ms([fast, block], [one, one_b], repeats)
        f_scsa = count_module(fast.eval(), one).flops / 1e6
        f_block = count_module(block.eval(), one_b, scopes=()).flops / 1e6
        fast.train(), block.train()
        print(f"{f'{c}x{side}x{side}':>12} {1e3 * t_fast:8.2f} {1e3 * t_slow:8.2f} {1e3 * t_block:8.2f} "
              f"{t_fast / t_block:7.2f}x | {i_fast:8.3f} {i_block:8.3f} {i_fast / i_block:5.2f}x | "
              f"{f_scsa:7.2f}/{f_block:<8.2f} {f_scsa / f_block:5.3f}")


def profile_rows(backbone: str, resolution: int, batch: int, dev: torch.device,
                 fmt: torch.memory_format = torch.contiguous_format, steps: int = 5, top: int = 4) -> None:
    """``--profile``: per distinct SCSA shape of ``backbone``, where one forward + backward step spends its time."""
    print(f"{backbone} at {resolution} px{', channels-last' * (fmt == torch.channels_last)}: SCSA fwd+bwd at batch "
          f"{batch} under the profiler, {steps} steps; self time of the top ops as a share of the step "
          "(calls per step)")
    for c, side, _block, _shape in block_shapes(backbone, resolution):
        fast = SCSA(c).to(dev)
        x = torch.randn(batch, c, side, side, device=dev).contiguous(memory_format=fmt).requires_grad_()
        time_pair([fast], x, repeats=1, warmup=2)
        with _native_stderr_silenced(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]
        ) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                x.grad = None
                fast.zero_grad(set_to_none=True)
                fast(x).sum().backward()
            wall = (time.perf_counter() - t0) / steps
        events = prof.events()
        dispatched = sum(
            e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
            for e in events
        ) / steps
        # Self times of all recorded events (ops, autograd nodes, our autograd Functions) exclude their children:
        # what is left of the wall time ran in Python outside any of them.
        recorded = sum(e.self_cpu_time_total for e in events) / 1e6 / steps
        ranked = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        shares = ", ".join(f"{e.key.removeprefix('autograd::engine::evaluate_function: ')} "
                           f"{100 * e.self_cpu_time_total / 1e6 / steps / wall:.0f}% ({e.count / steps:g})"
                           for e in ranked)
        print(f"{f'{c}x{side}x{side}':>12} {1e3 * wall:7.2f} ms, {dispatched:4.0f} ops/step, outside ops "
              f"{100 * max(0.0, 1 - recorded / wall):3.0f}% | {shares}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backbone", help="time SCSA at this timm backbone's slot shapes (see the module docstring)")
    ap.add_argument("--resolution", type=int, default=48, help="input size for --backbone (default 48)")
    ap.add_argument("--channels-last", action="store_true", help="inputs channels-last, as a proxy trains")
    ap.add_argument("--profile", action="store_true", help="with --backbone: where SCSA's step spends its time")
    args = ap.parse_args()
    if args.profile and not args.backbone:
        ap.error("--profile needs --backbone")
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    if args.backbone and args.profile:
        profile_rows(args.backbone, args.resolution, args.batch, dev, fmt)
        return
    if args.backbone:
        backbone_rows(args.backbone, args.resolution, args.batch, args.repeats, dev, fmt)
        return
    print(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"fwd+bwd median of {args.repeats}{', channels-last' * args.channels_last}")
    print(f"{'shape':>14} {'step ms':>9} {'ours ms':>9} {'speed-up':>9} {'saved MB step/ours':>19} "
          f"{'peak MB step/ours':>18} {'max|dy|':>9}")
    ratios = []
    for c, s in SHAPES:
        fast = SCSA(c).to(dev)
        with torch.no_grad():  # non-trivial norms so that the comparison exercises every parameter
            for p in fast.parameters():
                p.add_(0.1 * torch.randn_like(p))
        slow = StepByStepSCSA(fast)
        x = torch.randn(args.batch, c, s, s, device=dev).contiguous(memory_format=fmt).requires_grad_()
        y_fast = fast(x)
        (g_fast,) = torch.autograd.grad(y_fast.square().sum(), x)
        y_slow = slow(x)
        (g_slow,) = torch.autograd.grad(y_slow.square().sum(), x)
        dy = (y_fast - y_slow).abs().max().item()
        dg = ((g_fast - g_slow).abs().max() / g_slow.abs().max()).item()
        if dy > 1e-4 * y_slow.abs().max().item() or dg > 1e-4:
            raise SystemExit(f"outputs differ at {c}x{s}x{s}: max|dy|={dy:.2e}, rel max|dgrad|={dg:.2e}")
        t_slow, t_fast = time_pair([slow, fast], x, args.repeats)
        ratio = t_slow / t_fast
        ratios.append(ratio)
        mb_slow, mb_fast = saved_bytes(slow, x) / 2**20, saved_bytes(fast, x) / 2**20
        peak_slow, peak_fast = peak_mib(slow, x), peak_mib(fast, x)
        print(f"{f'{c}x{s}x{s}':>14} {t_slow * 1e3:9.2f} {t_fast * 1e3:9.2f} {ratio:8.2f}x "
              f"{mb_slow:9.1f}/{mb_fast:<9.1f} {peak_slow:8.1f}/{peak_fast:<9.1f} {dy:9.1e}")
    geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
    print(f"geometric mean speed-up: {geomean:.2f}x")


if __name__ == "__main__":
    main()
