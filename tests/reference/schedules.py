"""transformers' learning-rate schedules, step by step: writes {name: [lr at step 0..total]} as
JSON to argv[1] for a base learning rate of 3e-5, 7 warm-up steps and 40 training steps."""
import json
import sys

import torch
from transformers import get_scheduler

BASE_LR, WARMUP, TOTAL = 3e-5, 7, 40
out = {}
for name in ["linear", "cosine", "constant", "constant_with_warmup", "polynomial"]:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=BASE_LR)
    sched = get_scheduler(name, opt, num_warmup_steps=WARMUP, num_training_steps=TOTAL)
    lrs = []
    for _ in range(TOTAL):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    out[name] = lrs
with open(sys.argv[1], "w") as f:
    json.dump(out, f)
