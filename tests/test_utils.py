"""utils.py: the unpadded sampler, exact gathering by dataset index and the sums over processes, without a
process group and with 2 gloo processes on uneven shards."""

import json
import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

import utils


def test_gather_and_sampler_without_process_group():
    s = utils.UnpaddedDistributedSampler(7, rank=1, world_size=3)
    assert list(s) == [1, 4] and len(s) == 2
    assert list(utils.UnpaddedDistributedSampler(3)) == [0, 1, 2]
    a, b = utils.gather_by_index(torch.tensor([2, 0, 1]), torch.tensor([20, 0, 10]), torch.tensor([[2.0], [0.0], [1.0]]))
    assert a.tolist() == [0, 10, 20] and b.view(-1).tolist() == [0.0, 1.0, 2.0]
    x = torch.tensor([1.0, 2.0])
    assert utils.all_reduce_sum(x) is x and utils.all_reduce_sum([1, 2]).tolist() == [1, 2]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = {}
        # 5 items over 2 ranks: rank 0 holds 0, 2, 4 and rank 1 holds 1, 3
        shard = list(utils.UnpaddedDistributedSampler(5))
        idx = torch.tensor(shard)
        vals, flags = utils.gather_by_index(idx, idx.float() * 10, idx % 2 == 0)  # bool: gloo cannot gather it
        out.update(shard=shard, gathered=vals.tolist(), flags=flags.tolist(), flag_dtype=str(flags.dtype))
        # 1 item over 2 ranks: rank 1 has nothing and does not know the trailing shape [2]
        mine = list(utils.UnpaddedDistributedSampler(1))
        (rows,) = utils.gather_by_index(torch.tensor(mine, dtype=torch.long),
                                        torch.tensor([[7.0, 8.0]] * len(mine)).reshape(len(mine), 2))
        out["one_item"] = rows.tolist()
        out["sum_tensor"] = utils.all_reduce_sum(torch.tensor([rank + 1.0, 10.0])).tolist()  # [1 + 2, 10 + 10]
        counts = utils.all_reduce_sum(np.array([rank, 1]))  # numpy: summed as int64, exact
        out["sum_numpy"], out["sum_dtype"] = counts.tolist(), str(counts.dtype)
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(out, f)
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_gather_every_item_once(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0.pop("shard") == [0, 2, 4] and r1.pop("shard") == [1, 3]
    assert r0 == r1 == {"gathered": [0.0, 10.0, 20.0, 30.0, 40.0], "flags": [True, False, True, False, True],
                        "flag_dtype": "torch.bool", "one_item": [[7.0, 8.0]], "sum_tensor": [3.0, 20.0],
                        "sum_numpy": [1, 2], "sum_dtype": "int64"}
