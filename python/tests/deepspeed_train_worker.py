"""One ZeRO-3 + NVMe-offload training run on the CPU accelerator, for
deepspeed_training.py. Usage: deepspeed_train_worker.py OUT.pt NVME_DIR CONFIG {stock,handle,swapper}
(stock: DeepSpeed's op and swappers; handle: patch_deepspeed(swappers=False), libswapper's
aio_handle under DeepSpeed's swappers; swapper: patch_deepspeed(), libswapper's swappers)
with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set (torch.distributed, gloo)."""

import json
import os
import sys

import torch

out, nvme, config_name, impl = sys.argv[1:5]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import deepspeed  # noqa: E402
from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum  # noqa: E402

if impl in ("handle", "swapper"):
    from swapper.deepspeed import patch_deepspeed

    patch_deepspeed(swappers=impl == "swapper")

CONFIGS = {
    "param": dict(optimizer=False),
    "param_optimizer": dict(optimizer=True),
    "fast_init": dict(optimizer=True, fast_init=True),
    "pipeline": dict(optimizer=True, pipeline=True),
    "fp32": dict(optimizer=True, dtype=torch.float32),
    "two_ranks": dict(optimizer=True),
}
opts = CONFIGS[config_name]

torch.manual_seed(0)
# Sizes that swap: the embedding and the head (8192 x 128) are partitions of at least
# 1 MiB of bf16 per rank with two ranks (DeepSpeed swaps params of >= 1 MiB, MIN_AIO_BYTES) and, with the
# sub_group_size below, sub-groups of at least 1 MiB of fp32 per rank with two ranks
# (optimizer state swaps from 1 MiB too); the layers between stay in memory. buffer_size
# holds the largest sub-group (DeepSpeed's fast_init reads a sub-group into one buffer).
VOCAB, DIM, LAYERS, STEPS, BATCH, SEQ = 8192, 128, 2, 4, 2, 16


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, DIM)
        self.layers = torch.nn.ModuleList(
            torch.nn.TransformerEncoderLayer(DIM, 4, 2 * DIM, dropout=0.0, batch_first=True) for _ in range(LAYERS)
        )
        self.head = torch.nn.Linear(DIM, VOCAB)

    def forward(self, x):
        h = self.emb(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


zero = {
    "stage": 3,
    "stage3_param_persistence_threshold": 0,
    "stage3_max_live_parameters": 1,
    "stage3_prefetch_bucket_size": 1,
    "sub_group_size": 1 << 19,  # of partition elements (per rank)
    "offload_param": {"device": "nvme", "nvme_path": nvme, "buffer_count": 8, "buffer_size": 1 << 21, "max_in_cpu": 0},
}
if opts["optimizer"]:
    zero["offload_optimizer"] = {
        "device": "nvme",
        "nvme_path": nvme,
        "fast_init": opts.get("fast_init", False),
        "pipeline_read": opts.get("pipeline", False),
        "pipeline_write": opts.get("pipeline", False),
        # DeepSpeed's pipelined swapper holds three sub-groups of four buffers at its peak
        # (it asserts with its default of 4).
        "buffer_count": 12 if opts.get("pipeline", False) else 4,
    }
config = {
    "train_micro_batch_size_per_gpu": BATCH,
    "gradient_accumulation_steps": 1,
    "bf16": {"enabled": opts.get("dtype", torch.bfloat16) == torch.bfloat16},
    "optimizer": {"type": "Adam", "params": {"lr": 1e-2, "torch_adam": True}},
    "zero_optimization": zero,
    "aio": {"block_size": 1048576, "queue_depth": 8, "intra_op_parallelism": 1, "single_submit": False, "overlap_events": True},
    "steps_per_print": 1000,
}
deepspeed.init_distributed(dist_backend="gloo")
rank = torch.distributed.get_rank()
# The dtype comes from the config ("bf16" enabled or not), not from Init's dtype argument:
# DeepSpeed 0.19.8's Init._set_dtype reads `dtype or torch.float16 if fp16 else torch.bfloat16
# if ...`, so on a CPU without fp16 support (no AVX512-FP16/AMX) any dtype given becomes bf16.
with deepspeed.zero.Init(config_dict_or_path=config, remote_device="nvme"):
    model = Model()
want_dtype = opts.get("dtype", torch.bfloat16)
assert all(p.dtype == want_dtype for p in model.parameters()), (
    f"params are {sorted({str(p.dtype) for p in model.parameters()})}, the configuration asked for {want_dtype}")
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
gen = torch.Generator().manual_seed(1 + rank)
losses = []
for _ in range(STEPS):
    x = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    logits = engine(x)
    loss = torch.nn.functional.cross_entropy(logits.float().view(-1, VOCAB), x.view(-1))
    engine.backward(loss)
    engine.step()
    losses.append(loss.item())
weights = {}
for name, p in engine.module.named_parameters():
    with deepspeed.zero.GatheredParameters([p]):
        weights[name] = p.detach().clone()
# Which classes did the work (the test checks that the patched run used libswapper's),
# and how much of the model they kept on NVMe (the test checks that both swapped).
opt = engine.optimizer
swappers = {
    "param": type(next(engine.module.parameters()).nvme_swapper).__module__,
    "optimizer": type(opt.optimizer_swapper).__module__ if opt.optimizer_swapper else None,
    "params_on_nvme": sum(p.ds_tensor.final_location == OffloadDeviceEnum.nvme for p in engine.module.parameters()),
    "subgroups_on_nvme": sum(bool(opt._swappable_optimizer_subgroup(i)) for i in range(len(opt.fp16_groups))),
}
torch.save({"losses": losses, "weights": weights, "rank": rank, "swappers": swappers}, f"{out}.rank{rank}")
print(json.dumps({"rank": rank, "losses": losses}))
