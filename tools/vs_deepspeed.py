#!/usr/bin/env python3
"""Side-by-side benchmark: DeepSpeed's aio_handle against libswapper's drop-in.

The same workload goes through DeepSpeed's own async I/O op
(deepspeed.ops.op_builder.AsyncIOBuilder().load().aio_handle) and through
swapper.deepspeed.aio_handle (python/swapper/deepspeed.py over the C library named by
SWAPPER_LIBRARY), alternating run for run (A B, B A, A B, ...), with the page cache dropped (--drop-caches)
before every timed run. Every implementation runs in a worker process of its own, so
the CPU time reported for it (getrusage of that process: all its threads, io_uring's
io-wq workers included) is its own and nobody else's. CPU spent in kernel worker threads
(kworker: unwritten-extent conversion, I/O completion work) belongs to no process; it is
sampled system-wide from /proc and shown separately (it includes whatever else the
machine does meanwhile).

Workloads (all O_DIRECT; DeepSpeed always opens with O_DIRECT, libswapper does on file
systems that support it):
  seq    one file of --seq-size bytes (default 1 GiB), one async op and a wait
  small  --small COUNTxSIZE,... (default 2048x64K,2048x8K): one file per op, all submitted
         asynchronously, then one wait
each in three phases: new (the files are deleted before the run), overwrite (the files
exist at full size), read.
  params --params COUNTxSIZE,... (default 64x32M,2048x64K): the NATIVE parameter swapper
         (python/swapper/param_swapper.py Swapper over libswapper: a pool of COUNT
         page-locked buffers, swap_out_and_release of every param, asynchronous, then
         wait_writes; swap_in of every param, then wait_reads) against DeepSpeed's op doing
         what DeepSpeed's swapper does: one file per param ({id}_param.tensor.swp), every
         param's async_pwrite (async_pread), then one wait. new: a fresh swapper on an
         empty folder (DeepSpeed: the files deleted); overwrite: every param swapped out
         again; read. Only the I/O calls and the wait are timed (not get_buffer, not
         filling the buffers). The first --impl of kind ds is DeepSpeed's side.

Usage (root, for dropping the page cache):
  SWAPPER_LIBRARY=$PWD/target/release/libswapper.so \\
  ~/.cache/libswapper/deepspeed-venv/bin/python tools/vs_deepspeed.py --dir /mnt/nvme/bench
  ... --impl ds --impl ls --impl 'ls-noprealloc:ls:SWAPPER_PREALLOCATE=0'   (before/after)
  ... --smoke      (tiny sizes, one run, checks the bytes; what the test suite runs)

Getting torch and DeepSpeed when they are missing: use the cached venv
(~/.cache/libswapper/deepspeed-venv has torch 2.15 and deepspeed 0.19.8), or make one:
  python3 -m venv ~/.cache/libswapper/deepspeed-venv
  ~/.cache/libswapper/deepspeed-venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
  ~/.cache/libswapper/deepspeed-venv/bin/pip install deepspeed numpy
DeepSpeed's async_io op is compiled on first use (a few minutes; cached under
$TORCH_EXTENSIONS_DIR, default ~/.cache/libswapper/torch-extensions, as in the tests): it needs a C++ compiler, ninja (apt install ninja-build or pip
install ninja) and libaio's headers (apt install libaio-dev).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_PKG = os.path.join(os.path.dirname(HERE), "python")
VENV = "~/.cache/libswapper/deepspeed-venv"
TORCH_EXTENSIONS = "~/.cache/libswapper/torch-extensions"

HOW_TO_GET = f"""torch and deepspeed are needed for this benchmark. Either run it with the cached venv:
    {VENV}/bin/python {os.path.relpath(os.path.abspath(__file__))} ...
or create one:
    python3 -m venv {VENV}
    {VENV}/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    {VENV}/bin/pip install deepspeed numpy
DeepSpeed's async_io op then compiles at first use: it needs g++, ninja (apt install ninja-build)
and libaio's headers (apt install libaio-dev)."""

GIB = 1 << 30


def parse_size(text):
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(float(text[:-1] if text[-1:] in "KMG" else text) * mult)


def human(n):
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


# --------------------------------------------------------------------------- worker

MADV_COLLAPSE = 25  # Linux 6.1: make the range transparent huge pages now


def _pages(tensor):
    """The 2 MiB-aligned part of the tensor's memory: (address, length)."""
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first = (start + (2 << 20) - 1) & ~((2 << 20) - 1)
    last = end & ~((2 << 20) - 1)
    return first, max(0, last - first)


def collapse(tensor, kind):
    """Backs the tensor's memory with 2 MiB pages (madvise MADV_COLLAPSE), so that both
    implementations move the bytes from the same kind of pages: DeepSpeed's pinned
    allocator gives 4 KiB pages, libswapper's 2 MiB ones, and a 1 MiB request from 4 KiB
    pages is split by this disk's segment limit."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    addr, length = _pages(tensor)
    if length and libc.madvise(addr, length, MADV_COLLAPSE) != 0:
        err = ctypes.get_errno()
        print(f"{kind}: madvise(MADV_COLLAPSE) failed: {os.strerror(err)}; the buffer keeps its pages",
              file=sys.stderr)


def huge_kib(tensor):
    """KiB of the tensor's memory on huge pages (AnonHugePages of its mappings)."""
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo < end and hi > start
            elif inside and head == "AnonHugePages:":
                total += int(line.split()[1])
    return total

# A worker owns one handle and one page-locked buffer and carries out the parent's
# commands, one JSON line each, answering with one JSON line.


def _worker(kind, args):
    # The answers go to the parent on the original stdout; anything the libraries print
    # (DeepSpeed's build log and warnings, C++ std::cout) goes to stderr instead.
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def answer(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        import torch
    except ImportError as e:
        answer({"error": f"cannot import torch ({e}).\n{HOW_TO_GET}"})
        return 2
    if kind == "ds":
        # DeepSpeed compiles its op with the first ninja on PATH, and ninja 1.11 (Debian's)
        # and 1.13 (pip's, in the venv) hash command lines differently: each takes the
        # other's build for stale and rebuilds the whole op (minutes at -O0). Use this
        # interpreter's venv tools first, as an activated venv would.
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        try:
            from deepspeed.ops.op_builder import AsyncIOBuilder
        except ImportError as e:
            answer({"error": f"cannot import deepspeed ({e}).\n{HOW_TO_GET}"})
            return 2
        builder = AsyncIOBuilder()
        if not builder.is_compatible(verbose=True):
            answer({"error": "DeepSpeed's async_io op cannot be built here (see above).\n" + HOW_TO_GET})
            return 2
        handle_class = builder.load(verbose=False).aio_handle
    else:
        # SWAPPER_PYTHON_PKG: another checkout's python/ folder (for before/after runs).
        sys.path.insert(0, os.environ.get("SWAPPER_PYTHON_PKG", PYTHON_PKG))
        from swapper.deepspeed import aio_handle as handle_class
    handle = handle_class(args["block"], args["queue_depth"], False, True, args["threads"])
    example = torch.empty(0, dtype=torch.uint8)
    buf = handle.new_cpu_locked_tensor(args["buffer_bytes"], example)
    if args["huge_pages"]:
        collapse(buf, kind)
    gen = torch.Generator().manual_seed(1234)
    buf.copy_(torch.randint(0, 256, (args["buffer_bytes"],), dtype=torch.uint8, generator=gen))
    check = None
    if args["verify"]:
        check = handle.new_cpu_locked_tensor(args["buffer_bytes"], example)
        if args["huge_pages"]:
            collapse(check, kind)
    answer({"ready": True, "huge_kib": huge_kib(buf)})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        size, files = cmd["size"], cmd["files"]
        target = check if (cmd["op"] == "read" and check is not None) else buf
        views = [target.narrow(0, i * size, size) for i in range(len(files))]
        if check is not None and cmd["op"] == "read":
            check.zero_()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for view, path in zip(views, files):
            if cmd["op"] == "write":
                rc = handle.async_pwrite(view, path)
            else:
                rc = handle.async_pread(view, path)
            if rc != 0:
                answer({"error": f"{kind}: async_p{cmd['op']} {path} returned {rc}"})
                return 1
        done = handle.wait()
        t1 = time.perf_counter()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        if done != len(files):
            answer({"error": f"{kind}: wait() returned {done}, expected {len(files)}"})
            return 1
        reply = {
            "seconds": t1 - t0,
            "cpu": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
        }
        if check is not None and cmd["op"] == "read":
            n = size * len(files)
            reply["verified"] = bool(torch.equal(check.narrow(0, 0, n), buf.narrow(0, 0, n)))
        answer(reply)
    return 0


# ----------------------------------------------------------- the native swapper worker


def _swapper_worker(args):
    """The native parameter swapper's side of the params workload: one command per line
    (open COUNT SIZE FOLDER, new / overwrite / read, quit), one JSON answer each."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def answer(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    sys.path.insert(0, os.environ.get("SWAPPER_PYTHON_PKG", PYTHON_PKG))
    import numpy as np
    from swapper.param_swapper import Swapper

    sw, count, numel = None, 0, 0

    def stamp(view, pid):
        view.view(np.uint64)[::512] = pid  # 8 bytes of every 4 KiB: the param's id

    answer({"ready": True, "huge_kib": 0})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "quit":
            break
        if op == "open":
            # A fresh swapper on an empty folder (the store empties it at open); untimed.
            if sw is not None:
                sw.close()
            count, numel = cmd["count"], cmd["size"] // 2
            sw = Swapper(
                cmd["folder"], buffer_count=count, buffer_numel=numel, pin_memory=True,
                block_size=args["block"], queue_depth=args["queue_depth"], thread_count=args["threads"],
            )
            # Random bytes in every pool buffer, so that no param is mostly zeros.
            gen = np.random.default_rng(1234)
            for k in range(count):
                sw.get_buffer(2**63 + k, numel).view(np.uint8)[:] = gen.integers(
                    0, 256, numel * 2, dtype=np.uint8)
            sw.release([2**63 + k for k in range(count)])
            answer({"seconds": 0.0, "cpu": 0.0})
            continue
        ids = list(range(count))
        if op in ("new", "overwrite"):
            for pid in ids:
                view = sw.get_buffer(pid, numel)
                if args["verify"]:
                    stamp(view, pid)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        if op == "read":
            sw.swap_in(ids, async_op=True)
            sw.wait_reads()
        else:
            sw.swap_out_and_release(ids, async_op=True, force_buffer_release=True)
            sw.wait_writes()
        t1 = time.perf_counter()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        reply = {"seconds": t1 - t0, "cpu": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)}
        if op == "read":
            if args["verify"]:
                reply["verified"] = all(
                    bool((sw.param_buffer(pid).view(np.uint64)[::512] == pid).all()) for pid in ids)
            sw.release(ids)
        answer(reply)
    if sw is not None:
        sw.close()
    return 0


def run_params(a, specs, ds_worker, settings, impl_env):
    """The params workload: the native swapper against DeepSpeed's op (one file per
    param), alternating A B / B A, caches dropped as for the other workloads. Returns the
    rows of every run."""
    import shutil

    ds_dir = os.path.join(a.dir, "ds-params")
    os.makedirs(ds_dir, exist_ok=True)
    # The swapper's side on several drives (--swapper-dirs), or beside DeepSpeed's.
    sw_dirs = [os.path.join(d, "sw-params") for d in (a.swapper_dirs.split(",") if a.swapper_dirs else [a.dir])]
    for d in sw_dirs:
        os.makedirs(d, exist_ok=True)
    sw_dir = sw_dirs if len(sw_dirs) > 1 else sw_dirs[0]
    sw_worker = Worker("swapper", "sw", impl_env, settings)
    results = []
    try:
        for count, size in specs:
            label = f"params {count} x {human(size)}"
            gib = count * size / GIB
            ds_files = [os.path.join(ds_dir, f"{i}_param.tensor.swp") for i in range(count)]
            print(f"\n== {label} ({count * size / 1e6:.1f} MB per run): native swapper vs DeepSpeed's op, "
                  f"one file per param")
            sw_worker.command({"op": "open", "count": count, "size": size, "folder": sw_dir})
            sides = [ds_worker, sw_worker]
            for phase in ("new", "overwrite", "read"):
                rows = {w.name: [] for w in sides}
                for run in range(a.runs):
                    for w in (sides if run % 2 == 0 else sides[::-1]):
                        if w is ds_worker:
                            if phase == "new":
                                remove(ds_files)
                            elif any(not os.path.exists(f) or os.path.getsize(f) < size for f in ds_files):
                                remove(ds_files)
                                w.run("write", ds_files, size)  # untimed: the files must exist
                        elif phase == "new" and run > 0:
                            w.command({"op": "open", "count": count, "size": size, "folder": sw_dir})
                        if a.drop_caches != "none":
                            drop_caches(a.drop_caches)
                        if w is ds_worker:
                            r = w.run("read" if phase == "read" else "write", ds_files, size)
                        else:
                            r = w.command({"op": phase})
                        if r.get("verified") is False:
                            raise SystemExit(f"{w.name}: {label} {phase}: the bytes read differ from those written")
                        row = {"impl": w.name, "workload": label, "phase": phase, "run": run,
                               "gbps": count * size / r["seconds"] / 1e9, "cpu_per_gib": r["cpu"] / gib,
                               "seconds": r["seconds"]}
                        rows[w.name].append(row)
                        results.append(row)
                        print(f"  {phase:9} run {run + 1} {w.name:>14}: {row['gbps']:6.2f} GB/s, "
                              f"CPU {row['cpu_per_gib']:.4f} s/GiB"
                              + ("  (param data verified)" if r.get("verified") else ""), flush=True)
                g_ds = [x["gbps"] for x in rows[ds_worker.name]]
                g_sw = [x["gbps"] for x in rows[sw_worker.name]]
                pair = [x / y for x, y in zip(g_sw, g_ds)]
                print(f"  -- {phase}: {ds_worker.name} {fmt_range(g_ds, '.2f')} GB/s, swapper "
                      f"{fmt_range(g_sw, '.2f')} GB/s: swapper/{ds_worker.name} "
                      f"{statistics.median(g_sw) / statistics.median(g_ds):.2f}x (per run pair "
                      f"{fmt_range(pair, '.2f')})", flush=True)
            remove(ds_files)
    finally:
        sw_worker.close()  # the swapper's lock and files go with it; then its folder
        for d in sw_dirs:
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(ds_dir, ignore_errors=True)
    return results


# --------------------------------------------------------------------------- parent


class Worker:
    def __init__(self, name, kind, env, settings):
        self.name, self.kind = name, kind
        full_env = dict(os.environ)
        full_env.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", kind, json.dumps(settings)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self.ready = self._expect("ready")

    def _expect(self, key=None):
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise SystemExit(f"{self.name}: the worker exited ({code}) without answering (its error is above)")
        reply = json.loads(line)
        if "error" in reply:
            raise SystemExit(f"{self.name}: {reply['error']}")
        if key is not None and key not in reply:
            raise SystemExit(f"{self.name}: unexpected answer {reply}")
        return reply

    def run(self, op, files, size):
        return self.command({"op": op, "files": files, "size": size})

    def command(self, cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._expect("seconds")

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            self.proc.wait()


def kworker_cpu():
    """CPU seconds used so far by each kworker thread (system-wide): {pid: seconds}."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        if comm.startswith("kworker"):
            fields = stat[stat.rindex(")") + 2 :].split()
            used[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return used


def kworker_delta(before, after):
    """CPU seconds the kworkers used between two samples: threads that exited meanwhile
    are left out (their last figures are gone), threads that started count in full."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


DROP = {"pagecache": "1", "all": "3"}


def drop_caches(what):
    """Writes back dirty data, then drops the page cache ("pagecache") or the page cache
    and the dentry and inode caches ("all")."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write(DROP[what] + "\n")


def remove(files):
    for path in files:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def fmt_range(values, spec):
    return f"{statistics.median(values):{spec}} [{min(values):{spec}}..{max(values):{spec}}]"


def parse_impl(text):
    """NAME[:KIND[:VAR=VALUE,...]] with KIND ds or ls (NAME alone is ds or ls)."""
    parts = text.split(":", 2)
    name = parts[0]
    kind = parts[1] if len(parts) > 1 else name
    if kind not in ("ds", "ls"):
        raise argparse.ArgumentTypeError(f"{text}: the kind must be ds or ls")
    env = {}
    if len(parts) > 2 and parts[2]:
        for item in parts[2].split(","):
            var, sep, value = item.partition("=")
            if not sep:
                raise argparse.ArgumentTypeError(f"{item}: expected VAR=VALUE")
            env[var] = value
    return name, kind, env


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        if sys.argv[2] == "sw":
            return _swapper_worker(json.loads(sys.argv[3]))
        return _worker(sys.argv[2], json.loads(sys.argv[3]))
    sys.stdout.reconfigure(line_buffering=True)
    # DeepSpeed's op builds once into the folder scripts/deepspeed-test.sh uses, not into
    # torch's shared default, where another torch, DeepSpeed or ninja would rebuild it.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser(TORCH_EXTENSIONS))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, help="folder for the files, on the file system to measure")
    p.add_argument("--runs", type=int, default=5, help="runs per implementation and phase (default 5)")
    p.add_argument("--seq-size", default="1G", help="bytes of the sequential file (default 1G)")
    p.add_argument("--small", default="2048x64K,2048x8K", help="COUNTxSIZE,... of the many-files workloads")
    p.add_argument("--params", default="64x32M,2048x64K",
                   help="COUNTxSIZE,... of the native-swapper workload (default 64x32M,2048x64K)")
    p.add_argument("--swapper-dirs",
                   help="FOLDER,FOLDER,...: the params workload's native swapper on these folders (one per "
                        "drive, the store spreading the params over them) instead of --dir, which DeepSpeed's "
                        "side keeps (for instance a RAID-0 of the same drives)")
    p.add_argument("--workloads", default="seq,small,params",
                   help="any of seq, small, params (default seq,small,params)")
    p.add_argument("--phases", default="new,overwrite,read", help="default new,overwrite,read")
    p.add_argument("--block", default="1M", help="block_size of both handles (default 1M)")
    p.add_argument("--queue-depth", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="intra_op_parallelism of both handles (default 2)")
    p.add_argument(
        "--impl",
        action="append",
        type=parse_impl,
        help="NAME[:KIND[:VAR=VALUE,...]], KIND ds (DeepSpeed) or ls (libswapper), with extra environment "
        "for that worker; repeat for each (default: --impl ds --impl ls). The first is the reference of the ratios.",
    )
    p.add_argument(
        "--huge-pages",
        action="store_true",
        help="back both implementations' buffers with 2 MiB pages (MADV_COLLAPSE); by default each uses its "
        "own pinned allocator (DeepSpeed's gives 4 KiB pages, libswapper's 2 MiB ones)",
    )
    p.add_argument(
        "--drop-caches",
        choices=("pagecache", "all", "none"),
        default="pagecache",
        help="before every run drop the page cache (default: what a swap file's data would be in without "
        "O_DIRECT), all caches (also the dentries and inodes: every open then reads the file's inode from "
        "the disk, as after a reboot or under memory pressure; a swapper's files are opened every step, so "
        "their inodes are normally cached), or none",
    )
    p.add_argument("--no-drop-caches", action="store_const", const="none", dest="drop_caches",
                   help="the same as --drop-caches none")
    p.add_argument("--verify", action="store_true", help="check the bytes read against those written")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one run, --verify, no cache dropping")
    p.add_argument("--json", help="also write every run's figures to this file")
    a = p.parse_args()

    if a.smoke:
        a.runs, a.seq_size, a.small, a.verify, a.drop_caches = 1, "8M", "16x64K,16x8K", True, "none"
        a.params = "4x4M,16x64K"
    impls = a.impl or [parse_impl("ds"), parse_impl("ls")]
    if len({name for name, _, _ in impls}) != len(impls):
        p.error("--impl names must differ")
    if any(kind == "ls" for _, kind, _ in impls) and not os.environ.get("SWAPPER_LIBRARY"):
        p.error("set SWAPPER_LIBRARY to the libswapper.so to measure (cargo build --release --lib makes it)")
    if a.drop_caches != "none" and os.geteuid() != 0:
        p.error("dropping the page cache needs root (or pass --drop-caches none)")

    workloads = []
    param_specs = []
    for w in a.workloads.split(","):
        if w == "params":
            for spec in a.params.split(","):
                count, _, size = spec.partition("x")
                param_specs.append((int(count), parse_size(size)))
            if not any(kind == "ds" for _, kind, _ in impls):
                p.error("the params workload compares with DeepSpeed: give an --impl of kind ds")
            if not os.environ.get("SWAPPER_LIBRARY"):
                p.error("the params workload needs SWAPPER_LIBRARY (the native swapper's library)")
        elif w == "seq":
            workloads.append(("seq " + human(parse_size(a.seq_size)), 1, parse_size(a.seq_size)))
        elif w == "small":
            for spec in a.small.split(","):
                count, _, size = spec.partition("x")
                workloads.append((f"{int(count)} x {human(parse_size(size))}", int(count), parse_size(size)))
        else:
            p.error(f"unknown workload {w}")
    phases = a.phases.split(",")
    for ph in phases:
        if ph not in ("new", "overwrite", "read"):
            p.error(f"unknown phase {ph}")
    settings = {
        "block": parse_size(a.block),
        "queue_depth": a.queue_depth,
        "threads": a.threads,
        "buffer_bytes": max([count * size for _, count, size in workloads]
                            + [count * size for count, size in param_specs]),
        "verify": a.verify,
        "huge_pages": a.huge_pages,
    }
    os.makedirs(a.dir, exist_ok=True)

    import platform

    print(f"vs_deepspeed: {time.strftime('%Y-%m-%d %H:%M %Z')}, {platform.node()}, Linux {platform.release()}")
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", a.dir], capture_output=True,
                        text=True).stdout.strip() or "file system unknown"
    print(f"folder {a.dir} ({fs}); block {human(settings['block'])}, queue depth {a.queue_depth}, "
          f"{a.threads} threads; {a.runs} runs each, alternating; page cache "
          f"{ {'none': 'kept', 'pagecache': 'dropped before every run', 'all': 'and dentry/inode caches dropped before every run'}[a.drop_caches] }")
    print("implementations: " + ", ".join(
        f"{name} ({'DeepSpeed aio_handle' if kind == 'ds' else 'swapper.deepspeed.aio_handle'}"
        f"{''.join(' ' + k + '=' + v for k, v in env.items())})" for name, kind, env in impls))
    if any(kind == "ls" for _, kind, _ in impls):
        print(f"SWAPPER_LIBRARY={os.environ['SWAPPER_LIBRARY']}")
    if a.swapper_dirs:
        print(f"the params workload's native swapper on {a.swapper_dirs} (DeepSpeed's side on {a.dir})")

    workers = []
    try:
        for name, kind, env in impls:
            workers.append(Worker(name, kind, env, settings))
        print("buffers: " + ", ".join(
            f"{w.name} {w.ready['huge_kib'] >> 10} of {settings['buffer_bytes'] >> 20} MiB on huge pages"
            for w in workers) + (" (--huge-pages)" if a.huge_pages else " (each library's own allocator)"))
        results = []
        for label, count, size in workloads:
            files = {w.name: [os.path.join(a.dir, f"{w.name}.{i}.swp") for i in range(count)] for w in workers}
            gib = count * size / GIB
            print(f"\n== {label} ({count * size / 1e6:.1f} MB per run)")
            for phase in phases:
                rows = {w.name: [] for w in workers}
                for run in range(a.runs):
                    # A B, then B A: the runs right after another implementation's are
                    # slower on this disk (its metadata writeback), so no side always
                    # comes second.
                    for w in (workers if run % 2 == 0 else workers[::-1]):
                        fl = files[w.name]
                        if phase == "new":
                            remove(fl)
                        elif any(not os.path.exists(f) or os.path.getsize(f) < size for f in fl):
                            remove(fl)
                            w.run("write", fl, size)  # untimed: the files must exist
                        if a.drop_caches != "none":
                            drop_caches(a.drop_caches)
                        k0 = kworker_cpu()
                        r = w.run("read" if phase == "read" else "write", fl, size)
                        k1 = kworker_cpu()
                        if r.get("verified") is False:
                            raise SystemExit(f"{w.name}: {label} {phase}: the bytes read differ from those written")
                        row = {
                            "impl": w.name,
                            "workload": label,
                            "phase": phase,
                            "run": run,
                            "gbps": count * size / r["seconds"] / 1e9,
                            "cpu_per_gib": r["cpu"] / gib,
                            "kworker_per_gib": kworker_delta(k0, k1) / gib,
                            "seconds": r["seconds"],
                        }
                        rows[w.name].append(row)
                        results.append(row)
                        print(f"  {phase:9} run {run + 1} {w.name:>14}: {row['gbps']:6.2f} GB/s, "
                              f"CPU {row['cpu_per_gib']:.4f} s/GiB, kworker {row['kworker_per_gib']:.4f} s/GiB"
                              + ("  (bytes verified)" if r.get("verified") else ""), flush=True)
                ref = workers[0].name
                print(f"  -- {phase}: median [min..max]")
                for w in workers:
                    g = [x["gbps"] for x in rows[w.name]]
                    c = [x["cpu_per_gib"] for x in rows[w.name]]
                    k = [x["kworker_per_gib"] for x in rows[w.name]]
                    line = (f"  {w.name:>14}: {fmt_range(g, '.2f')} GB/s, CPU {fmt_range(c, '.4f')} s/GiB, "
                            f"kworker {fmt_range(k, '.4f')} s/GiB")
                    if w.name != ref:
                        tr = [x["gbps"] / y["gbps"] for x, y in zip(rows[w.name], rows[ref])]
                        cr = [x["cpu_per_gib"] / y["cpu_per_gib"] if y["cpu_per_gib"] > 0 else float("inf")
                              for x, y in zip(rows[w.name], rows[ref])]
                        g_ref = statistics.median(x["gbps"] for x in rows[ref])
                        c_ref = statistics.median(x["cpu_per_gib"] for x in rows[ref])
                        c_med = statistics.median(c)
                        line += (f"\n  {'':>14}  {w.name}/{ref}: throughput {statistics.median(g) / g_ref:.2f}x "
                                 f"(per run pair {fmt_range(tr, '.2f')}), CPU per GiB "
                                 f"{c_med / c_ref if c_ref > 0 else float('inf'):.2f}x "
                                 f"(per run pair {fmt_range(cr, '.2f')})")
                    print(line, flush=True)
            for fl in files.values():
                remove(fl)
        if param_specs:
            ds_name, _, _ = next(i for i in impls if i[1] == "ds")
            ds_worker = next(w for w in workers if w.name == ds_name)
            ls_env = next((env for _, kind, env in impls if kind == "ls"), {})
            results += run_params(a, param_specs, ds_worker, settings, ls_env)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        for w in workers:
            w.close()
    print("\nvs_deepspeed: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
