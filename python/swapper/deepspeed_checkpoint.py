"""DeepSpeed's NVMe checkpoint copies, diverted to snapshots of libswapper's optimizer
swapper (issue 20).

DeepSpeed 0.19.8's engine (deepspeed/runtime/engine.py) copies the optimizer swap
folder in exactly two places, each after `from shutil import copytree` inside the method
(so it calls whatever `shutil.copytree` is at that moment), and nowhere else:

- `DeepSpeedEngine.save_checkpoint`, when `zero_nvme_offload_optimizer()`, after the
  model and ZeRO files: `copytree(offload_dir, <save_dir>/<tag>/offloaded_tensors/rank<R>,
  ignore=<names containing "gradient">, dirs_exist_ok=False)`, offload_dir being
  `engine.optimizer.optimizer_swapper.swap_folder`; then the `latest` file is written.
- `DeepSpeedEngine.load_checkpoint`, likewise: `copytree(<load_dir>/<tag>/offloaded_tensors/
  rank<R>, offload_dir, dirs_exist_ok=True)`, then `engine.optimizer.reset_swap_buffers()`,
  which swaps every sub-group in and out (and rewrites the swapped bf16/fp16 params from
  the fp32 master weights).

The parameter swapper's folder is never copied: DeepSpeed rebuilds the params from the
fp32 master weights at load (reset_swap_buffers, or the ZeRO checkpoint files when the
optimizer is not on NVMe), so a checkpoint needs the optimizer's state only.

`install()` wraps those two engine methods so that while one of them runs on a thread,
`shutil.copytree` from (save) or into (load) the swap folder of the engine's optimizer
swapper, when that swapper is libswapper's DeepSpeedOptimizerSwapper, becomes its
`save_snapshot(dest)` / `load_snapshot(src)`. Every other copytree (another thread,
another folder, an engine on DeepSpeed's own swappers) goes to shutil's own.
"""

import contextvars
import functools
import importlib
import os
import shutil

# The engine whose save_checkpoint / load_checkpoint runs in this context (thread).
_ENGINE = contextvars.ContextVar("libswapper_deepspeed_checkpoint_engine", default=None)


def _optimizer_swapper(engine):
    from .deepspeed_optimizer_swapper import DeepSpeedOptimizerSwapper

    swapper = getattr(getattr(engine, "optimizer", None), "optimizer_swapper", None)
    return swapper if isinstance(swapper, DeepSpeedOptimizerSwapper) else None


def _same(a, b):
    return os.path.realpath(os.fspath(a)) == os.path.realpath(os.fspath(b))


def _in_engine_call(method):
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        token = _ENGINE.set(self)
        try:
            return method(self, *args, **kwargs)
        finally:
            _ENGINE.reset(token)

    wrapped.__libswapper_wraps__ = method
    return wrapped


def install():
    """Diverts DeepSpeed's NVMe checkpoint copies (see the module doc); returns a function
    that undoes it."""
    engine_class = importlib.import_module("deepspeed.runtime.engine").DeepSpeedEngine
    saved = [(engine_class, name, engine_class.__dict__[name]) for name in ("save_checkpoint", "load_checkpoint")]
    saved.append((shutil, "copytree", shutil.copytree))
    stock_copytree = shutil.copytree

    @functools.wraps(stock_copytree)
    def copytree(src, dst, *args, **kwargs):
        engine = _ENGINE.get()
        swapper = _optimizer_swapper(engine) if engine is not None else None
        if swapper is not None:
            if _same(src, swapper.swap_folder):
                swapper.save_snapshot(dst)
                return dst
            if _same(dst, swapper.swap_folder):
                swapper.load_snapshot(src)
                return dst
        return stock_copytree(src, dst, *args, **kwargs)

    for owner, name, method in saved[:2]:
        setattr(owner, name, _in_engine_call(method))
    shutil.copytree = copytree

    def undo():
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)

    return undo
