"""DeepSpeed's tests/unit/runtime/zero/test_nvme_checkpointing.py on the CPU accelerator,
for deepspeed_training.py: train 2 steps, save a checkpoint, train 2 more steps, note the
loss of a final batch; destroy the engine, build a new one in the same process, load the
checkpoint, train the same 2 steps again: the final loss must be identical. bf16 instead
of the test's fp16 (which it skips on the CPU accelerator).

Usage: deepspeed_checkpoint_worker.py OUT.pt DIR PARAM_DEVICE OPTIMIZER_DEVICE {stock,handle,swapper}
(devices: none, cpu, nvme) with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set.
SWAPPER_TEST_CHECKSUMS=1: patch_deepspeed(verify_checksums=True). The result also says
what the save put into the checkpoint's offloaded_tensors folder: its files, the bytes
they occupy (st_blocks), the bytes the file system's used space grew by during
save_checkpoint, and for each file whether all its extents are shared (FIEMAP), taken
right after the save."""

import json
import os
import sys

import torch

out, root, param_device, optim_device, impl = sys.argv[1:6]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import deepspeed  # noqa: E402
from deepspeed.runtime.zero.partition_parameters import Init  # noqa: E402

if impl in ("handle", "swapper"):
    from swapper.deepspeed import patch_deepspeed

    options = {"verify_checksums": True} if os.environ.get("SWAPPER_TEST_CHECKSUMS") == "1" else {}
    patch_deepspeed(swappers=impl == "swapper", **options)

zero_dir, ckpt_dir = os.path.join(root, "zero"), os.path.join(root, "checkpoint")
HIDDEN, LAYERS = 1024, 2  # 2 MiB bf16 weights: above aio.block_size, so swapped
FIRST, SECOND = 2, 2

config = {
    "train_micro_batch_size_per_gpu": 1,
    "steps_per_print": 1000,
    "optimizer": {"type": "Adam", "params": {"lr": 0.00015, "torch_adam": True}},
    "bf16": {"enabled": True},
    "zero_optimization": {
        "stage": 3,
        "offload_param": {"device": param_device, "nvme_path": zero_dir},
        "offload_optimizer": {"device": optim_device, "nvme_path": zero_dir},
        "sub_group_size": 100,
        "stage3_max_live_parameters": 100,
        "stage3_param_persistence_threshold": 0,
    },
    "aio": {"block_size": 1048576},
}


class SimpleModel(torch.nn.Module):
    """DeepSpeed's tests/unit/simple_model.py SimpleModel: linear layers, cross entropy."""

    def __init__(self):
        super().__init__()
        self.linears = torch.nn.ModuleList(torch.nn.Linear(HIDDEN, HIDDEN) for _ in range(LAYERS))
        self.loss = torch.nn.CrossEntropyLoss()

    def forward(self, x, y):
        for layer in self.linears:
            x = layer(x)
        return self.loss(x.float(), y)


def batches(count, seed):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(1, HIDDEN, generator=gen).to(torch.bfloat16), torch.randint(0, HIDDEN, (1,), generator=gen))
        for _ in range(count)
    ]


def build():
    with deepspeed.zero.Init(config_dict_or_path=config):
        model = SimpleModel()
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    return engine


def used_bytes(path):
    os.sync()
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


FS_IOC_FIEMAP = 0xC020660B
FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_SHARED = 0x1, 0x2000


def extents_shared(path):
    """Whether every extent of the file at `path` is shared with another file (FIEMAP:
    a reflink), None for a file without extents."""
    import fcntl
    import struct

    shared, start, seen = True, 0, 0
    with open(path, "rb") as f:
        while True:
            count = 32
            # struct fiemap: start, length, flags, mapped, count, reserved; then 56-byte extents.
            buf = bytearray(struct.pack("=QQIIII", start, (1 << 64) - 1 - start, 1, 0, count, 0) + bytes(56 * count))
            fcntl.ioctl(f.fileno(), FS_IOC_FIEMAP, buf)
            mapped = struct.unpack_from("=I", buf, 20)[0]
            last = False
            for k in range(mapped):
                logical, _, length, _, _, flags = struct.unpack_from("=QQQQQI", buf, 32 + 56 * k)
                seen += 1
                shared = shared and bool(flags & FIEMAP_EXTENT_SHARED)
                start = logical + length
                last = bool(flags & FIEMAP_EXTENT_LAST)
            if mapped == 0 or last:
                break
    return shared if seen else None


def saved_files(ckpt, grew):
    """What save_checkpoint put under offloaded_tensors (see the module doc)."""
    files = {}
    for folder, _, names in os.walk(ckpt):
        if "offloaded_tensors" not in folder:
            continue
        for name in names:
            path = os.path.join(folder, name)
            files[os.path.relpath(path, ckpt)] = dict(
                occupied=os.stat(path).st_blocks * 512, shared=extents_shared(path)
            )
    return dict(files=files, used_grew=grew)


def train(engine, data):
    losses = []
    for x, y in data:
        loss = engine(x, y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


deepspeed.init_distributed(dist_backend="gloo")
torch.manual_seed(123)
engine = build()
engine.empty_partition_cache()
first = train(engine, batches(FIRST, 1))
used_before = used_bytes(root)
engine.save_checkpoint(ckpt_dir)
saved = saved_files(ckpt_dir, used_bytes(root) - used_before)
second_batches = batches(SECOND, 2)
second = train(engine, second_batches)
final = batches(1, 3)[0]
loss_before = float(engine(*final))
engine.destroy()

Init.param_id = 0
engine = build()
engine.load_checkpoint(ckpt_dir)
again = train(engine, second_batches)
loss_after = float(engine(*final))
swappers = {
    "param": type(engine.module.linears[0].weight.nvme_swapper).__module__
    if getattr(engine.module.linears[0].weight, "nvme_swapper", None) is not None
    else None,
    "optimizer": type(engine.optimizer.optimizer_swapper).__module__ if engine.optimizer.optimizer_swapper else None,
}
result = dict(
    first=first,
    second=second,
    again=again,
    loss_before=loss_before,
    loss_after=loss_after,
    swappers=swappers,
    saved=saved,
)
torch.save(result, out)
print(json.dumps(result))
