"""Run by tests/test_fingerprint.py under torchrun (2 CPU processes, gloo): the trainer's own
``params_in_sync`` and ``peak_memory`` on a model that is equal on both processes, then on one whose
process 1 holds a single weight nudged by the smallest float32 step. Prints one JSON line (rank 0)."""

import json
import sys
from types import SimpleNamespace

import torch
from accelerate import Accelerator

from segros.train.loop import Trainer

acc = Accelerator(cpu=True)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 300), torch.nn.GELU(), torch.nn.Linear(300, 7))
holder = SimpleNamespace(backbone=model, accelerator=acc, engine="ddp")  # the Trainer fields it reads
equal = Trainer.params_in_sync(holder)
if acc.process_index == 1:
    with torch.no_grad():
        w = model[2].weight
        w[3, 150] = torch.nextafter(w[3, 150], torch.tensor(1.0))
nudged = Trainer.params_in_sync(holder)
peaks = Trainer.peak_memory(holder)
if acc.is_main_process:
    print(json.dumps({"world": acc.num_processes, "equal": equal, "nudged": nudged, "peaks": peaks}))
sys.stdout.flush()
acc.end_training()
