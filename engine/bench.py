"""Benchmark (not a test): reference vs fast backend on the same machine and inputs.

    python -m engine.bench [--batch 64] [--steps 2000] [--reps 3] [--ref-batch N]
                           [--infer-batch 16] [--arch ping] [--threads N] [--device cpu]

Every measurement runs in a fresh subprocess so that its peak memory is its own:
on CPU the peak is the growth of the process's maximum resident set size
(the kernel's VmHWM, reset just before the call, minus
the resident set size before it; ru_maxrss where /proc is missing) across the measured call, on CUDA
torch.cuda.max_memory_allocated. Repetitions are interleaved (reference, fast,
reference, fast, ...) and best and median are reported. The reference at batch 64
x 2000 steps needs about 11 GB and many minutes, so `--ref-batch` can measure it at
a smaller batch; its batch-`--batch` figures are then a linear projection in the
batch size and are labelled so.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

# Reference peak memory per sample-step, measured on the canonical network in
# float32 (2.8 GB at 16 x 2000): used only to choose a reference batch that fits.
_REF_BYTES_PER_SAMPLE_STEP = 8.5e4
_REF_MEMORY_LIMIT = 12e9
TRAIN_IMAGES, TEST_IMAGES, EPOCHS = 1600, 400, 100


def _measure(spec: dict) -> dict:
    """Run one training step or one inference pass as `spec` says; time and memory."""
    import torch
    import torch.nn.functional as F

    from engine import Config, init_weights, poisson_events
    from engine.data import load_tier
    from engine.simulate import simulate

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    if spec.get("loop"):  # the fast backend's time loop, forced (the GPU comparison)
        import engine.fast.network

        engine.fast.network.loop_family = lambda device, loop=spec["loop"]: loop
    config = Config(recipe=spec.get("recipe", "canonical"), arch=spec["arch"], backend=spec["backend"],
                    dtype=spec["dtype"], device=spec["device"], t_ms=spec["steps"] * 0.1)
    images = load_tier("smoke").train
    index = torch.arange(spec["batch"]) % len(images.labels)
    # the fast backend's compiled loops specialise on their arrays' layouts, which
    # depend on the trial's number of chunks: warm it up on the measured shape, so
    # the timed call compiles and loads nothing (the reference on a short trial)
    warm_steps = spec["steps"] if spec["backend"] == "fast" else 20
    warm_up = poisson_events(images.images[index], config, torch.Generator().manual_seed(1), n_steps=warm_steps)
    encode = time.perf_counter()
    x = poisson_events(images.images[index], config, torch.Generator().manual_seed(0))
    encode = time.perf_counter() - encode
    labels = images.labels[index].to(config.torch_device)
    weights = init_weights(config)
    train = spec["mode"] == "train"
    for name in config.trainable:
        weights[name].requires_grad_(train)

    if spec.get("pack", 1) > 1:  # K packed runs (PING and COBA by turns, own seeds) as one job
        once = _packed_step(spec, config, labels)
    else:
        def once(inputs):
            with torch.set_grad_enabled(train):
                # as engine.train and engine.evaluate call it: counts and logits, no trains
                out = simulate(weights, inputs, config, spike_trains=False)
                if train:
                    F.cross_entropy(out["logits"], labels).backward()
            if config.device != "cpu":
                torch.cuda.synchronize()

    once(warm_up)  # libraries, allocator, first-call paths
    if spec.get("count"):
        return _count_launches(once, x, spec)
    cuda = config.device != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    gc.collect()
    rss_before = _current_rss()
    _reset_peak_rss()
    wall, cpu = time.perf_counter(), time.process_time()
    once(x)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = (torch.cuda.max_memory_allocated() - base if cuda
            else max(0, _peak_rss() - rss_before))
    return {"wall_s": wall, "cpu_s": cpu, "peak_bytes": peak, "threads": torch.get_num_threads(),
            "encode_s": encode}


def _packed_step(spec: dict, config, labels):
    """One training step of spec["pack"] runs through engine.fast.simulate_fast_runs."""
    import torch
    import torch.nn.functional as F

    from engine import Config, init_weights
    from engine.fast import simulate_fast_runs

    configs = [Config.from_dict({**config.to_dict(), "arch": ("ping", "coba")[r % 2], "ei_strength": None,
                                 "v_grad_dampen": None, "seed": 42 + r}) for r in range(spec["pack"])]
    weights = [init_weights(c) for c in configs]
    for w, c in zip(weights, configs):
        for name in c.trainable:
            w[name].requires_grad_(True)
    # each run's own Adam step, as engine.packed takes them after the pack's one backward
    optimizers = [torch.optim.Adam([w[name] for name in c.trainable], lr=c.lr) for w, c in zip(weights, configs)]

    def once(inputs):
        outs = simulate_fast_runs(weights, [inputs] * len(configs), configs, spike_trains=False)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward([F.cross_entropy(out["logits"], labels) for out in outs])
        for optimizer in optimizers:
            optimizer.step()
        if config.device != "cpu":
            torch.cuda.synchronize()

    return once


def _count_launches(once, x, spec: dict) -> dict:
    """Kernel launches of one call: Triton launches plus torch ops (each op one or more kernels)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from engine.fast import gpu

    class Ops(TorchDispatchMode):
        def __init__(self, launches):
            super().__init__()
            self.launches, self.ops = launches, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not self.launches.inside:  # the Triton interpreter's own ops (CPU tests)
                self.ops += 1
            return func(*args, **(kwargs or {}))

    with gpu.counting_launches() as launches, Ops(launches) as ops:
        once(x)
    return {"kernels": launches.launches, "ops": ops.ops, "steps": spec["steps"]}


def _current_rss() -> int:
    """Resident set size now (Linux /proc; falls back to the high-water mark)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> None:
    """Reset the kernel's high-water mark (Linux >= 4.0) so the peak is this call's own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss() -> int:
    """VmHWM (reset above) or, without /proc, the process's ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _run_worker(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "engine.bench", "--worker", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _machine(threads: int) -> str:
    import torch

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (f"{platform.node()} | {os.cpu_count()} CPUs ({cpu}) | torch {torch.__version__} | "
            f"intra-op threads {threads or torch.get_num_threads()} | "
            f"load average at start {', '.join(f'{x:.2f}' for x in load)}")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="spikeboard bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64, help="training batch (default 64)")
    ap.add_argument("--steps", type=int, default=2000, help="steps per trial (default 2000)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    ap.add_argument("--ref-batch", type=int, default=0,
                    help="batch at which to measure the reference training step "
                         "(default: --batch, or smaller if it would need > 12 GB)")
    ap.add_argument("--infer-batch", type=int, default=16, help="inference batch (default 16)")
    ap.add_argument("--arch", choices=("ping", "coba"), default="ping")
    ap.add_argument("--recipe", choices=("canonical", "seed"), default="canonical",
                    help="model recipe (default canonical; seed: MODEL.md, last section; CPU only)")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu",
                    help="cpu, or cuda: the fused Triton loop against the torch-op loop (docs/PERFORMANCE.md)")
    ap.add_argument("--pack", type=int, default=6,
                    help="cuda: runs packed into one job for the projection (default 6, nb024's cells)")
    ap.add_argument("--gpu-comparison", action="store_true", help=argparse.SUPPRESS)  # cuda's report on any device
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap


def _reference_batch(args) -> int:
    if args.ref_batch:
        return args.ref_batch
    batch = args.batch
    while batch > 1 and batch * args.steps * _REF_BYTES_PER_SAMPLE_STEP > _REF_MEMORY_LIMIT:
        batch //= 2
    return batch


def _cases(args) -> list[dict]:
    base = {"arch": args.arch, "recipe": args.recipe, "dtype": args.dtype, "device": args.device,
            "threads": args.threads, "steps": args.steps}
    return [
        {**base, "backend": "reference", "mode": "train", "batch": _reference_batch(args)},
        {**base, "backend": "fast", "mode": "train", "batch": args.batch},
        {**base, "backend": "reference", "mode": "infer", "batch": args.infer_batch},
        {**base, "backend": "fast", "mode": "infer", "batch": args.infer_batch},
    ]


def _summarise(case: dict, runs: list[dict], target_batch: int) -> dict:
    """Best/median at the measured batch, and scaled to target_batch (a projection if different)."""
    scale = target_batch / case["batch"]
    walls = sorted(r["wall_s"] for r in runs)
    return {
        "best": walls[0], "median": statistics.median(walls),
        "cpu": statistics.median(r["cpu_s"] for r in runs),
        "peak": max(r["peak_bytes"] for r in runs),
        "best_at": walls[0] * scale, "median_at": statistics.median(walls) * scale,
        "peak_at": max(r["peak_bytes"] for r in runs) * scale,
        "rate": case["batch"] * case["steps"] / walls[0],
        "projected": scale != 1,
        "encode": statistics.median(r["encode_s"] for r in runs),
    }


def _line(name: str, case: dict, s: dict) -> str:
    return (f"  {name:<22} batch {case['batch']:>3} x {case['steps']} steps: best {s['best']:8.4g} s, "
            f"median {s['median']:8.4g} s (cpu {s['cpu']:8.4g} s), "
            f"{s['rate']:9.0f} sample-steps/s, peak +{s['peak'] / 2**20:8.0f} MB")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(_measure(json.loads(args.worker))))
        return 0
    if args.device.startswith("cuda") or args.gpu_comparison:
        return _main_gpu(args)
    cases = _cases(args)
    print("spikeboard bench:", _machine(args.threads))
    sizes = "800 E / 200 I" if args.recipe == "canonical" else "1024 E / 256 I"
    print(f"  arch {args.arch}, {args.dtype}, device {args.device}, {args.recipe} recipe {sizes}, "
          f"smoke-tier MNIST Poisson input, {args.reps} interleaved repetitions, fresh process each")
    print("  peak = peak RSS (VmHWM, reset before the call) minus RSS before the call; CUDA: max_memory_allocated")
    runs: list[list[dict]] = [[] for _ in cases]
    for rep in range(args.reps):
        for i, case in enumerate(cases):
            runs[i].append(_run_worker(case))
            print(f"  rep {rep + 1}/{args.reps} {case['backend']:>9} {case['mode']:<5} "
                  f"batch {case['batch']}: {runs[i][-1]['wall_s']:.2f} s", flush=True)
    targets = [args.batch, args.batch, args.infer_batch, args.infer_batch]
    stats = [_summarise(c, r, t) for c, r, t in zip(cases, runs, targets)]
    _report(args, cases, stats)
    return 0


def _report(args, cases, stats) -> None:
    names = ["reference train step", "fast train step", "reference inference", "fast inference"]
    print("\nResults (one training step = forward + backward of cross-entropy; both without spike trains, as training runs):")
    for name, case, s in zip(names, cases, stats):
        print(_line(name, case, s))
    ref_train, fast_train, ref_inf, fast_inf = stats
    if ref_train["projected"]:
        print(f"  PROJECTION: the reference training step was measured at batch {cases[0]['batch']}; "
              f"at batch {args.batch} it would take about best {ref_train['best_at']:.1f} s / median "
              f"{ref_train['median_at']:.1f} s and +{ref_train['peak_at'] / 2**30:.1f} GB "
              f"(linear in batch)")
    print("\nRatios (reference / fast):")
    print(f"  training speed-up at batch {args.batch}: best {ref_train['best_at'] / fast_train['best']:.1f}x, "
          f"median {ref_train['median_at'] / fast_train['median']:.1f}x"
          + (" (reference side projected)" if ref_train["projected"] else ""))
    print(f"  training peak memory: fast is 1/{ref_train['peak_at'] / max(fast_train['peak'], 2**20):.1f} "
          f"of the reference")
    print(f"  inference speed-up at batch {args.infer_batch}: best {ref_inf['best'] / fast_inf['best']:.1f}x, "
          f"median {ref_inf['median'] / fast_inf['median']:.1f}x")
    # the Poisson input of every batch is drawn in the epoch too (engine.encoding.poisson_events)
    encode_train, encode_test = fast_train["encode"], fast_inf["encode"]
    print(f"  input encoding (poisson_events, median): {encode_train:.3f} s per training batch of {args.batch}, "
          f"{encode_test:.3f} s per inference batch of {args.infer_batch}")
    print(f"\nProjected {args.recipe} cell ({EPOCHS} epochs x ({TRAIN_IMAGES} training images at batch "
          f"{args.batch} + {TEST_IMAGES} test images inferred), {args.steps} steps, best times, "
          f"input encoding included):")
    for label, train, infer in (("reference", ref_train, ref_inf), ("fast", fast_train, fast_inf)):
        per_epoch = ((TRAIN_IMAGES / args.batch) * (train["best_at"] + encode_train)
                     + TEST_IMAGES * args.steps / infer["rate"] + TEST_IMAGES / args.infer_batch * encode_test)
        print(f"  {label:<9}: {per_epoch:8.1f} s per epoch, {per_epoch * EPOCHS / 3600:8.2f} h per run")


def _gpu_cases(args) -> list[dict]:
    base = {"arch": args.arch, "dtype": args.dtype, "device": args.device, "threads": args.threads,
            "steps": args.steps, "backend": "fast"}
    return [
        {**base, "loop": "triton", "mode": "train", "batch": args.batch},
        {**base, "loop": "torch_ops", "mode": "train", "batch": args.batch},
        {**base, "loop": "triton", "mode": "train", "batch": args.batch, "pack": args.pack},
        {**base, "loop": "triton", "mode": "infer", "batch": args.infer_batch},
    ]


def _main_gpu(args) -> int:
    """The fused Triton loop against the torch-op loop, interleaved, each call in a fresh process."""
    cases = _gpu_cases(args)
    names = ["fused train step", "torch-op train step", f"fused train, {args.pack} runs packed",
             "fused inference"]
    print("spikeboard bench:", _machine(args.threads), "|", _gpu_name(args.device))
    print(f"  arch {args.arch}, {args.dtype}, device {args.device}, canonical 800 E / 200 I, "
          f"smoke-tier MNIST Poisson input, {args.reps} interleaved repetitions, fresh process each")
    print("  peak = torch.cuda.max_memory_allocated during the call, minus what was allocated before")
    counts = [_run_worker({**cases[i], "count": True}) for i in (0, 1)]
    runs: list[list[dict]] = [[] for _ in cases]
    for rep in range(args.reps):
        for i, case in enumerate(cases):
            runs[i].append(_run_worker(case))
            print(f"  rep {rep + 1}/{args.reps} {names[i]:<28} batch {case['batch']}: "
                  f"{runs[i][-1]['wall_s']:.3f} s", flush=True)
    stats = [_summarise(c, r, c["batch"]) for c, r in zip(cases, runs)]
    _report_gpu(args, cases, names, stats, counts)
    return 0


def _gpu_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return f"no GPU: device {device}"


def _report_gpu(args, cases, names, stats, counts) -> None:
    fused, torch_ops, packed, infer = stats
    print("\nKernel launches per training step (Triton launches + torch ops; one batch, "
          f"{args.steps} steps):")
    for label, count in zip(("fused", "torch-op loop"), counts):
        total = count["kernels"] + count["ops"]
        print(f"  {label:<14}: {count['kernels']:>7} Triton + {count['ops']:>7} torch ops = {total:>8} "
              f"({total / args.steps:.2f} per step)")
    ratio = (counts[1]["kernels"] + counts[1]["ops"]) / max(1, counts[0]["kernels"] + counts[0]["ops"])
    print(f"  the fused loop launches 1/{ratio:.0f} of the torch-op loop's")
    print("\nResults (one training step = forward + backward of cross-entropy, without spike trains):")
    for name, case, s in zip(names, cases, stats):
        print(f"  {name:<30} batch {case['batch']:>4} x {case['steps']} steps: best {s['best']:8.3f} s, "
              f"median {s['median']:8.3f} s, peak GPU memory {s['peak'] / 2**20:8.0f} MB")
    print(f"  fused vs torch-op loop at batch {args.batch}: best {torch_ops['best'] / fused['best']:.1f}x, "
          f"median {torch_ops['median'] / fused['median']:.1f}x")
    steps_per_epoch = math.ceil(TRAIN_IMAGES / args.batch)
    infer_per_epoch = TEST_IMAGES / args.infer_batch * infer["best"]
    cell = EPOCHS * (steps_per_epoch * fused["best"] + infer_per_epoch)
    torch_cell = EPOCHS * steps_per_epoch * torch_ops["best"]
    print(f"\nProjected medium cell ({EPOCHS} epochs x ({TRAIN_IMAGES} training images at batch {args.batch} + "
          f"{TEST_IMAGES} test images inferred), {args.steps} steps, best times, encoding left out):")
    print(f"  fused        : {cell / 60:8.1f} min per run")
    print(f"  torch-op loop: {torch_cell / 60:8.1f} min per run (training steps alone)")
    # a packed step is measured (engine.fast.simulate_fast_runs); each run's test set is inferred on its own
    packed_cell = EPOCHS * (steps_per_epoch * packed["best"] + args.pack * infer_per_epoch)
    print(f"  {args.pack} cells packed in one job (nb024): {packed_cell / 60:8.1f} min, against "
          f"{args.pack * cell / 60:.1f} min one after another (a step as engine.packed takes it: one simulation "
          f"and backward, each run's Adam step; `spikeboard serve --pack-runs {args.pack}` packs queued runs)")


if __name__ == "__main__":
    raise SystemExit(main())
