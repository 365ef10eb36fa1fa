"""Processes of a corpus run: accelerate's process state, model placement, broadcasting from the main process.

A corpus run is one process, or several under ``torchrun`` / ``accelerate launch`` (rank and world size from
accelerate's :class:`~accelerate.PartialState`, which wraps ``torch.distributed``). Work that must happen once (checking
the data and the output directory, writing the manifest) runs on the main process through :func:`on_main`, which hands
its result, or its error, to every process.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable

import torch
from transformers import PreTrainedModel

from .errors import CorpusError

if TYPE_CHECKING:  # pragma: no cover
    from accelerate import PartialState

# Processes wait at barriers for the slowest one; a shard of a large model can take long, so the default 30 minutes
# of torch.distributed would kill healthy runs.
SYNC_TIMEOUT = timedelta(hours=12)


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    return torch.cuda.is_available() or bool(accelerator is not None and accelerator.is_available())


def process_state() -> "PartialState":
    """accelerate's process state: rank, world size and device of this process (one process when not launched).

    Under ``torchrun`` or ``accelerate launch`` this joins the process group (gloo on CPUs, NCCL on GPUs); a state
    the caller already created (an ``Accelerator``, say) is reused as it is.
    """
    from accelerate import PartialState

    # accelerate picks gloo only when asked for CPUs; without an accelerator there is nothing else to use.
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not _has_accelerator()
    return PartialState(cpu=cpu, timeout=SYNC_TIMEOUT)


def place_model(model: PreTrainedModel, state: "PartialState") -> None:
    """Put the model on this process's device, as accelerate would, unless it was placed with a device_map."""
    if getattr(model, "hf_device_map", None):
        return  # dispatched over several devices by device_map="auto": leave it where it is
    if state.device.type != "cpu" and next(model.parameters()).device != state.device:
        model.to(state.device)


def broadcast(value: Any, state: "PartialState") -> Any:
    """The main process's ``value`` on every process."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value if state.is_main_process else None]
    broadcast_object_list(box)
    return box[0]


def on_main(fn: Callable[[], Any], state: "PartialState") -> Any:
    """Run ``fn`` on the main process and hand its result, or its error, to every process.

    Without this, an error on the main process (a bad column, a refused directory) would leave the others waiting.
    """
    outcome: tuple[str, Any] = ("ok", None)
    failure: BaseException | None = None
    if state.is_main_process:
        try:
            outcome = ("ok", fn())
        except Exception as err:
            failure = err
            outcome = ("error", (type(err), str(err)))
    outcome = broadcast(outcome, state)
    if failure is not None:
        raise failure
    if outcome[0] == "error":
        kind, message = outcome[1]
        try:
            error = kind(message)
        except Exception:  # an exception type that takes other arguments
            error = RuntimeError(message)
        raise error
    return outcome[1]


def process_max_memory(state: "PartialState") -> dict[Any, int] | None:
    """For ``device_map="auto"`` under several processes on one machine: this process's share of the GPUs.

    Without it every process would spread its copy of the model over all GPUs of the machine. With G GPUs and P
    processes per machine, local process i gets GPUs i*G/P .. (i+1)*G/P - 1 (so launch P = G / GPUs-per-copy).
    """
    if not torch.cuda.is_available():
        return None
    local = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
    gpus = torch.cuda.device_count()
    if local <= 1:
        return None
    if gpus < local:
        raise CorpusError(f"--device-map auto with {local} processes on a machine with {gpus} GPUs: launch at most "
                          "one process per GPU (or group of GPUs).")
    per = gpus // local
    own = range(state.local_process_index * per, (state.local_process_index + 1) * per)
    memory: dict[Any, int] = {i: torch.cuda.get_device_properties(i).total_memory for i in own}
    import psutil

    memory["cpu"] = psutil.virtual_memory().available // local
    return memory


def progress_bar(total: int, name: str, method: str, state: "PartialState", progress: bool):
    """A bar over this process's share of the examples, on the main process only (not one per process)."""
    from accelerate.utils import tqdm as main_tqdm

    share = f", process 0 of {state.num_processes}" if state.num_processes > 1 else ""  # the bar counts its share
    return main_tqdm(total=total, unit="ex", disable=not progress, desc=f"{name} ({method}{share})")
