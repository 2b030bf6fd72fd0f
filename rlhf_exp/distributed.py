"""Several processes (Lightning's DDP or FSDP, `trainer=ddp`): which one this is, and the statistics
that every rank must agree on. Every rank runs the same pipeline; the trained stages are data-parallel
(the data modules shard each batch, DDP averages the gradients), and every decision that depends on a batch
(whitening, the KL controller, early stops, logged statistics) reads figures gathered across ranks,
so the ranks take the same decisions and keep the same weights. In one process these functions
compute exactly what the local ones do."""
from __future__ import annotations

import torch


def rank() -> int:
    """This process's global rank (0 in a single process); known before the process group exists,
    from the environment Lightning's launcher (or torchrun, or Slurm) sets."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only
    return int(getattr(rank_zero_only, "rank", 0) or 0)


def is_main() -> bool:
    return rank() == 0


def initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if initialized() else 1


def barrier() -> None:
    """Wait for every rank (nothing in one process)."""
    if initialized():
        torch.distributed.barrier()


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ over ranks of a tensor (itself in one process)."""
    if not initialized():
        return x
    x = x.clone()
    torch.distributed.all_reduce(x)
    return x


def global_mean(stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each scalar statistic averaged over the ranks, in one collective (the same dict in one process)."""
    if not initialized() or not stats:
        return stats
    keys = list(stats)
    values = all_sum(torch.stack([torch.as_tensor(stats[k]).float().reshape(()) for k in keys])) / world_size()
    return dict(zip(keys, values))


def masked_moments(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mean, Bessel-corrected variance) of the masked entries of every rank's x, for whitening a batch
    that is spread over ranks; None in one process (whiten with the local moments, as before)."""
    if not initialized():
        return None
    m = mask.to(x.dtype)
    sums = all_sum(torch.stack([(x * m).sum(), m.sum(), (x * x * m).sum()]))
    n = sums[1]
    mean = sums[0] / n
    return mean, (sums[2] / n - mean * mean) * n / (n - 1)


def global_mean_loss(local_mean: torch.Tensor, n_local) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to back-propagate, loss to log) for a mean over items (tokens, pairs, sets) of a batch
    shared by the ranks: the mean over every rank's items, N in all. DDP averages the ranks'
    gradients, so each rank back-propagates W·Σ_local / N; the logged value is Σ / N, the loss one
    process would see on the whole batch. In one process: the loss itself, twice."""
    if not initialized():
        return local_mean, local_mean.detach()
    n = torch.as_tensor(n_local, dtype=torch.float32, device=local_mean.device)
    total = all_sum(torch.stack([local_mean.detach().float() * n, n]))
    return local_mean * (world_size() * n / total[1]), total[0] / total[1]


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (one process: [obj])."""
    if not initialized():
        return [obj]
    out = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def random_states() -> dict:
    """This process's random generators (torch, CUDA, Python, NumPy), in types a checkpoint loads
    with weights_only=True (tensors, lists, ints)."""
    import random

    import numpy as np
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss]}


def set_random_states(states: dict) -> None:
    import random

    import numpy as np
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    random.setstate(states["python"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
