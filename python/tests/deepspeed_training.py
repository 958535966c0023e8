"""DeepSpeed ZeRO-3 + NVMe offload training, DeepSpeed's stock async_io op against
libswapper's drop-in (swapper.deepspeed.patch_deepspeed), on the CPU accelerator:
losses and final weights must be bit-identical. Run by scripts/deepspeed-test.sh (the
file name keeps it out of the default collection: torch and deepspeed are required here,
a missing one is an import error, not a skip)."""

import os
import socket
import subprocess
import sys

import pytest
import torch  # noqa: F401 - required: fail, not skip, without it
import deepspeed  # noqa: F401

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deepspeed_train_worker.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(tmp_path, config, impl, world_size=1):
    """Runs the worker in `world_size` processes (one swapper each); a list of per-rank
    results {losses, weights}."""
    nvme = tmp_path / f"nvme-{impl}"
    nvme.mkdir()
    out = str(tmp_path / f"{config}-{impl}")
    port = str(free_port())
    procs = []
    for rank in range(world_size):
        env = dict(
            os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=port
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, WORKER, out, str(nvme) + "/", config, impl],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for rank, p in enumerate(procs):
        log, _ = p.communicate(timeout=600)
        assert p.returncode == 0, f"{impl} rank {rank} of {config} failed:\n{log[-4000:]}"
    return [torch.load(f"{out}.rank{rank}") for rank in range(world_size)]


@pytest.mark.parametrize(
    "config,world_size",
    [("param", 1), ("param_optimizer", 1), ("fast_init", 1), ("pipeline", 1), ("two_ranks", 2)],
)
def test_bit_identical_to_stock_op(tmp_path, config, world_size):
    stock = train(tmp_path, config, "stock", world_size)
    ours = train(tmp_path, config, "swapper", world_size)
    for a, b in zip(stock, ours):
        assert a["losses"] == b["losses"], (a["losses"], b["losses"])
        assert a["weights"].keys() == b["weights"].keys()
        for name in a["weights"]:
            assert torch.equal(a["weights"][name].view(torch.int16), b["weights"][name].view(torch.int16)), name
