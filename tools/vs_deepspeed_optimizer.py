#!/usr/bin/env python3
"""Side-by-side benchmark of DeepSpeed's optimizer-state swapping (ZeRO-3,
offload_optimizer.device = nvme), alternating implementations run for run.

Modes:
  update  the update phase alone, as ZeRO-3's stage drives it per sub-group:
          swap_in_optimizer_state(p[i], async_parameter=p[i+1]) -> DeepSpeed's CPU Adam
          (DeepSpeedCPUAdam; --adam torch for torch's) on p[i] -> swap_out_optimizer_state(
          p[i], async_swap=i is not last). The same optimizer state (seeded), sub-group
          sizes and Adam for every implementation. Gradients are swapped out
          (swap_out_gradients, as in backward) and flushed before the timed phase; each
          timed step reads the fp32 params, both moments and the gradient of every
          sub-group and writes the params and moments back. After the last step the
          fp32 params are read back and hashed: every implementation must give the same
          digest (checked).
  train   end-to-end ZeRO-3 training steps in fp32 (bf16 matmul is ~75x slower without
          AVX512-BF16), params and optimizer state on NVMe: DeepSpeed's stock op and
          swappers against patch_deepspeed(); losses must agree bit for bit (checked).
  checkpoint  DeepSpeed's NVMe checkpoint of the same state (the train mode's engine
          after one step): save_checkpoint timed --steps times (new tags; os.sync()
          inside the timing, so a copy through the page cache is counted whole), then
          load_checkpoint of the first as many times, into the same engine. Stock:
          DeepSpeed's copytree of the optimizer swap folder and back; patched: a
          snapshot of libswapper's optimizer swapper (reflinks on XFS/btrfs, copies of
          the recorded ranges elsewhere) and its restore and adoption. Reports the median
          save and load time, the swap folder's and the checkpoint's occupied bytes and
          how much the file system's used space grew per save (a reflink: next to
          nothing); the loss of a step after each load must agree (checked). Put --dir
          on the file system to measure (XFS with reflink, ext4).

Implementations:
  update: ds-partitioned   DeepSpeed's PartitionedOptimizerSwapper on its stock op
          ds-pipelined     DeepSpeed's PipelinedOptimizerSwapper (pipeline_read/write)
          ds-partitioned+ls, ds-pipelined+ls   the same classes on libswapper's
                           aio_handle (patch_deepspeed(swappers=False))
          libswapper-b4    the replacement (python/swapper/deepspeed_optimizer_swapper.py,
                           on the native optimizer swapper) with buffer_count 4: the
                           page-locked memory of ds-partitioned
          libswapper-b12   the replacement with buffer_count 12: that of ds-pipelined
  train, checkpoint:
          stock            DeepSpeed's op and swappers
          patched          patch_deepspeed(): libswapper's aio_handle, parameter swapper
                           and optimizer swapper

Every run is a worker process of its own; per run it reports the step time (median of
the timed steps), GB/s (the process's /proc/self/io read_bytes + write_bytes over the
timed steps: O_DIRECT transfers), CPU seconds (getrusage of the worker: all its threads)
and the page-locked memory (the largest VmLck of the worker, sampled after every
sub-group).

Usage (not on a busy machine: the lead schedules measurements):
  SWAPPER_LIBRARY=$PWD/target/release/libswapper.so TORCH_EXTENSIONS_DIR=~/.cache/libswapper/torch-extensions \\
  ~/.cache/libswapper/deepspeed-venv/bin/python tools/vs_deepspeed_optimizer.py --dir /mnt/nvme/bench \\
      --mode update --state-gib 4 --runs 5
  ... --mode train --hidden 2048 --layers 4 --runs 5
  ... --mode checkpoint --hidden 4096 --layers 8 --runs 5 --dir /mnt/xfs/bench   (then on ext4)
  ... --smoke   (tiny sizes, one run of each, both modes, the checks; what the test command runs)
  ... --mode checkpoint --smoke   (the same for the checkpoint mode)
"""

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_PKG = os.path.join(os.path.dirname(HERE), "python")
GIB = 1 << 30
UPDATE_IMPLS = ("ds-partitioned", "ds-pipelined", "ds-partitioned+ls", "ds-pipelined+ls", "libswapper-b4", "libswapper-b12")
TRAIN_IMPLS = ("stock", "patched")


# --------------------------------------------------------------------------- measuring


def io_bytes():
    with open("/proc/self/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["read_bytes"]) + int(fields["write_bytes"])


def locked_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmLck:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Meter:
    """Step times, bytes and CPU over the timed steps; the peak VmLck throughout."""

    def __init__(self):
        self.locked_peak = 0
        self.steps = []
        self.sample()

    def sample(self):
        self.locked_peak = max(self.locked_peak, locked_bytes())

    def start(self):
        self.t0, self.io0, self.cpu0 = time.perf_counter(), io_bytes(), cpu_seconds()
        self.tstep = self.t0

    def step_done(self):
        now = time.perf_counter()
        self.steps.append(now - self.tstep)
        self.tstep = now

    def result(self, **extra):
        elapsed = time.perf_counter() - self.t0
        moved = io_bytes() - self.io0
        return dict(
            step_s=statistics.median(self.steps),
            gbps=moved / elapsed / 1e9 if elapsed else 0.0,
            bytes_per_step=moved / len(self.steps),
            cpu_s=(cpu_seconds() - self.cpu0) / len(self.steps),
            locked=self.locked_peak,
            **extra,
        )


def patch(impl):
    """patch_deepspeed() as `impl` asks (libswapper-*: the replacement class is used
    directly, nothing patched)."""
    sys.path.insert(0, PYTHON_PKG)
    from swapper.deepspeed import patch_deepspeed

    if impl.endswith("+ls"):
        patch_deepspeed(swappers=False)
    elif impl == "patched":
        patch_deepspeed()


# --------------------------------------------------------------------------- update phase


def update_worker(a):
    import torch

    patch(a["impl"])
    from deepspeed import comm as dist

    dist.get_rank = lambda *x, **k: 0  # no process group: one rank
    from deepspeed.runtime.swap_tensor import optimizer_utils, partitioned_optimizer_swapper, pipelined_optimizer_swapper

    for module in (optimizer_utils, partitioned_optimizer_swapper, pipelined_optimizer_swapper):
        module.dist = dist
    pipelined = a["impl"].startswith("ds-pipelined")
    if a["impl"].startswith("libswapper"):
        from swapper.deepspeed_optimizer_swapper import DeepSpeedOptimizerSwapper as cls
    elif pipelined:
        cls = pipelined_optimizer_swapper.PipelinedOptimizerSwapper
    else:
        cls = partitioned_optimizer_swapper.PartitionedOptimizerSwapper
    n, count = a["sub_group_size"], a["sub_groups"]
    gen = torch.Generator().manual_seed(7)
    params = []
    for i in range(count):
        p = torch.nn.Parameter(torch.empty(0))
        p.ds_id = f"{i}_{i}"
        params.append(p)
    if a["adam"] == "cpu_adam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(params, lr=1e-3)
    else:
        optimizer = torch.optim.Adam(params, lr=1e-3)
    swap_config = types.SimpleNamespace(
        buffer_count=a["buffer_count"], pipeline_read=pipelined, pipeline_write=pipelined, pipeline=pipelined, fast_init=False
    )
    aio_config = dict(
        block_size=1 << 20, queue_depth=8, intra_op_parallelism=1, single_submit=False, overlap_events=True, use_gds=False
    )
    base = os.path.join(a["dir"], "zero_stage_3")
    os.makedirs(base, exist_ok=True)
    meter = Meter()
    swapper = cls(
        swap_config=swap_config, aio_config=aio_config, base_folder=base, optimizer=optimizer,
        largest_numel=n, device="cpu", dtype=torch.float32, timers=None,
    )
    for p in params:  # one sub-group at a time: the sources need not all fit in memory
        swapper.initialize_parameters(parameters=[p], src_tensors=[torch.randn(n, generator=gen)])
    grads = [torch.randn(n, generator=gen) * 1e-2 for _ in range(min(count, 2))]

    def step(timed):
        for i, p in enumerate(params):  # backward: gradients out
            swapper.swap_out_gradients(parameter=p, gradient_offsets=[0], gradient_tensors=[grads[i % len(grads)]])
        swapper.flush_gradients()
        if timed:
            meter.tstep = time.perf_counter()
        for i, p in enumerate(params):
            nxt = params[i + 1] if i + 1 < count else None
            swapper.swap_in_optimizer_state(parameter=p, async_parameter=nxt)
            optimizer.param_groups[0]["params"] = [p]
            optimizer.step()
            optimizer.param_groups[0]["params"] = []
            swapper.swap_out_optimizer_state(parameter=p, async_swap=nxt is not None)
            meter.sample()
        if timed:
            meter.step_done()

    step(False)  # creates the moments (ZeRO-3's initialize_optimizer_states does this)
    meter.start()
    for _ in range(a["steps"]):
        step(True)
    result = meter.result()
    digest = hashlib.blake2b(digest_size=16)
    for i, p in enumerate(params):
        swapper.swap_in_optimizer_state(parameter=p, async_parameter=None)
        digest.update(p.detach().numpy().tobytes())
        swapper.release_swap_buffers(parameter=p)
    result["digest"] = digest.hexdigest()
    result["state_bytes"] = 3 * 4 * n * count
    return result


# --------------------------------------------------------------------------- training


def build_engine(a):
    """The ZeRO-3 engine of the train and checkpoint modes (fp32, params and optimizer
    state on NVMe under a["dir"]) and its two batches."""
    import torch

    patch(a["impl"])
    import deepspeed

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(a["port"]))
    deepspeed.init_distributed(dist_backend="gloo")
    hidden, layers = a["hidden"], a["layers"]
    nvme = os.path.join(a["dir"], "nvme")
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "steps_per_print": 1 << 30,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-3}},
        "zero_optimization": {
            "stage": 3,
            "sub_group_size": a["sub_group_size"],
            "stage3_param_persistence_threshold": 0,
            "offload_param": {"device": "nvme", "nvme_path": nvme, "buffer_count": 2 * layers + 2,
                              "buffer_size": hidden * hidden, "max_in_cpu": 0},
            "offload_optimizer": {"device": "nvme", "nvme_path": nvme, "pipeline_read": a["pipeline"],
                                  "pipeline_write": a["pipeline"]},
        },
        "aio": {"block_size": 1 << 20, "queue_depth": 8, "intra_op_parallelism": 1, "single_submit": False,
                "overlap_events": True},
    }
    torch.manual_seed(0)
    # fp32 because the config enables neither bf16 nor fp16. Not Init's dtype argument:
    # DeepSpeed 0.19.8's Init._set_dtype reads `dtype or torch.float16 if fp16 else
    # torch.bfloat16 if ...`, so on a CPU without fp16 support any dtype given becomes bf16.
    with deepspeed.zero.Init(config_dict_or_path=config, remote_device="nvme"):
        model = torch.nn.Sequential(*[torch.nn.Linear(hidden, hidden) for _ in range(layers)])
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise RuntimeError(f"the params are {sorted(map(str, dtypes))}, not fp32")
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    gen = torch.Generator().manual_seed(1)
    data = [torch.randn(4, hidden, generator=gen) for _ in range(2)]
    return engine, data


def train_worker(a):
    engine, data = build_engine(a)
    meter = Meter()
    losses = []

    def step(i):
        loss = engine(data[i % 2]).pow(2).mean()
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        meter.sample()

    step(0)  # warm-up: the first step creates the optimizer state
    meter.start()
    for i in range(a["steps"]):
        step(i + 1)
        meter.step_done()
    return meter.result(losses=losses)


# --------------------------------------------------------------------------- checkpoints


def used_bytes(path):
    os.sync()
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def folder_bytes(path):
    """Bytes the files under `path` occupy (st_blocks: holes and shared extents count
    as their owner's, so a reflinked file counts in full)."""
    return sum(os.lstat(os.path.join(d, n)).st_blocks * 512 for d, _, names in os.walk(path) for n in names)


def checkpoint_worker(a):
    """DeepSpeed's NVMe checkpoint of the same state, timed: after a warm-up step (the
    optimizer state exists), `steps` save_checkpoint calls (new tags) and as many
    load_checkpoint calls of the first, into the same engine. The loss of a step after
    each load is the check (identical across implementations)."""
    engine, data = build_engine(a)

    def step(i):
        loss = engine(data[i % 2]).pow(2).mean()
        engine.backward(loss)
        engine.step()
        return loss.item()

    losses = [step(0)]
    ckpt = os.path.join(a["dir"], "checkpoint")
    swap = engine.optimizer.optimizer_swapper.swap_folder
    state = folder_bytes(swap)
    saves, loads, grew = [], [], []
    for k in range(a["steps"]):
        before = used_bytes(a["dir"])
        t0 = time.perf_counter()
        engine.save_checkpoint(ckpt, tag=f"t{k}")
        os.sync()  # the copy's dirty pages (copytree writes through the page cache)
        saves.append(time.perf_counter() - t0)
        grew.append(used_bytes(a["dir"]) - before)
    offloaded = folder_bytes(os.path.join(ckpt, "t0", "offloaded_tensors"))
    losses.append(step(1))
    for _ in range(a["steps"]):
        t0 = time.perf_counter()
        engine.load_checkpoint(ckpt, tag="t0")
        os.sync()
        loads.append(time.perf_counter() - t0)
        losses.append(step(1))
    return dict(
        save_s=statistics.median(saves),
        load_s=statistics.median(loads),
        state_bytes=state,
        offloaded_bytes=offloaded,
        used_grew=statistics.median(grew),
        losses=losses,
    )


def spread_ms(rs, key):
    """'[min..max]' of a key in seconds over runs, in ms."""
    v = [r[key] * 1e3 for r in rs]
    return f"[{min(v):.1f}..{max(v):.1f}]"


def report_checkpoint(impls, results):
    print("== checkpoint")
    print(f"{'impl':10} {'save ms':>9} {'[min..max]':>17} {'load ms':>9} {'[min..max]':>17} {'swap MiB':>9} "
          f"{'ckpt MiB':>9} {'used +MiB/save':>15}")
    med = {}
    for impl in impls:
        rs = results[impl]
        med[impl] = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "losses"}
        m = med[impl]
        print(
            f"{impl:10} {m['save_s'] * 1e3:9.1f} {spread_ms(rs, 'save_s'):>17} {m['load_s'] * 1e3:9.1f} "
            f"{spread_ms(rs, 'load_s'):>17} {m['state_bytes'] / (1 << 20):9.1f} "
            f"{m['offloaded_bytes'] / (1 << 20):9.1f} {m['used_grew'] / (1 << 20):15.1f}"
        )
    base = impls[0]
    for impl in impls[1:]:
        print(
            f"{impl}/{base}: save {med[impl]['save_s'] / med[base]['save_s']:.2f}x, "
            f"load {med[impl]['load_s'] / med[base]['load_s']:.2f}x"
        )
    values = {json.dumps(r["losses"]) for impl in impls for r in results[impl]}
    if len(values) != 1:
        sys.exit(f"checkpoint: the implementations disagree on the losses after a load: {values}")
    print(f"checkpoint: losses identical across {len(impls)} implementations")


# --------------------------------------------------------------------------- driver


def run_worker(args, mode, impl, run_dir, **extra):
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    spec = dict(mode=mode, impl=impl, dir=run_dir, **extra)
    p = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    shutil.rmtree(run_dir, ignore_errors=True)
    if p.returncode != 0:
        sys.exit(f"{mode} {impl} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def default_buffer_count(impl):
    if impl.startswith("libswapper-b"):
        return int(impl[len("libswapper-b"):])
    return 12 if "pipelined" in impl else 4


def alternate(impls, runs):
    """A B C, C B A, A B C, ...: every implementation in every position."""
    for r in range(runs):
        yield from (impls if r % 2 == 0 else tuple(reversed(impls)))


def report(mode, impls, results, check_key):
    print(f"== {mode}")
    print(f"{'impl':22} {'step ms':>9} {'[min..max]':>17} {'GB/s':>7} {'CPU s/step':>11} {'page-locked MiB':>16}")
    med = {}
    for impl in impls:
        rs = results[impl]
        med[impl] = {k: statistics.median(r[k] for r in rs) for k in ("step_s", "gbps", "cpu_s", "locked")}
        m = med[impl]
        print(f"{impl:22} {m['step_s'] * 1e3:9.1f} {spread_ms(rs, 'step_s'):>17} {m['gbps']:7.2f} "
              f"{m['cpu_s']:11.3f} {m['locked'] / (1 << 20):16.1f}")
    base = impls[0]
    for impl in impls[1:]:
        # Runs alternate (A B C, C B A, ...): the k-th run of each is a neighbour's pair.
        pairs = [a["step_s"] / b["step_s"] for a, b in zip(results[impl], results[base])]
        print(f"{impl}/{base}: step time {med[impl]['step_s'] / med[base]['step_s']:.2f}x "
              f"(per run pair {statistics.median(pairs):.2f} [{min(pairs):.2f}..{max(pairs):.2f}])")
    values = {json.dumps(r[check_key]) for impl in impls for r in results[impl]}
    if len(values) != 1:
        sys.exit(f"{mode}: the implementations disagree on {check_key}: {values}")
    print(f"{mode}: {check_key} identical across {len(impls)} implementations")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker")
    ap.add_argument("--dir", default="target/bench/vs-deepspeed-optimizer")
    ap.add_argument("--mode", choices=("update", "train", "both", "checkpoint"), default="both",
                    help="both: update and train; checkpoint: on its own")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--state-gib", type=float, default=4.0, help="update: optimizer state (params + 2 moments)")
    ap.add_argument("--sub-group-size", type=int, default=100_000_000, help="elements per sub-group")
    ap.add_argument(
        "--buffer-count", type=int, help="offload_optimizer.buffer_count for every implementation (default: 4, "
        "DeepSpeed's, for the partitioned swapper; 12 for the pipelined one, the fewest it runs with: three "
        "sub-groups of four tensors; libswapper-bN: N)")
    ap.add_argument("--adam", choices=("cpu_adam", "torch"), default="cpu_adam")
    ap.add_argument("--impl", action="append", help="implementations (default: all of the mode)")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--pipeline", action="store_true", help="train: pipeline_read/write")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.worker:
        a = json.loads(args.worker)
        workers = dict(update=update_worker, train=train_worker, checkpoint=checkpoint_worker)
        print(json.dumps(workers[a["mode"]](a)))
        return
    if args.smoke:
        args.runs, args.steps, args.sub_group_size, args.hidden, args.layers = 1, 2, 1 << 18, 512, 2
        args.state_gib = 3 * 4 * 3 * args.sub_group_size / GIB  # three sub-groups
    os.makedirs(args.dir, exist_ok=True)
    modes = ("update", "train") if args.mode == "both" else (args.mode,)
    port = 29600 + os.getpid() % 1000
    for mode in modes:
        impls = tuple(args.impl or (UPDATE_IMPLS if mode == "update" else TRAIN_IMPLS))
        if mode == "checkpoint" and args.smoke:
            args.steps = 1
        results = {impl: [] for impl in impls}
        for k, impl in enumerate(alternate(impls, args.runs)):
            run_dir = os.path.join(args.dir, f"{mode}-{k}")
            if mode == "update":
                sub_groups = max(1, round(args.state_gib * GIB / (12 * args.sub_group_size)))
                r = run_worker(args, mode, impl, run_dir, sub_group_size=args.sub_group_size, sub_groups=sub_groups,
                               steps=args.steps, adam=args.adam,
                               buffer_count=args.buffer_count or default_buffer_count(impl))
            else:  # train, checkpoint
                r = run_worker(args, mode, impl, run_dir, hidden=args.hidden, layers=args.layers, steps=args.steps,
                               sub_group_size=args.sub_group_size, pipeline=args.pipeline, port=port + k)
            results[impl].append(r)
        if mode == "checkpoint":
            report_checkpoint(impls, results)
        else:
            report(mode, impls, results, "digest" if mode == "update" else "losses")
    print("vs_deepspeed_optimizer: done")


if __name__ == "__main__":
    main()
