"""Writes the PyTorch fixtures of tests/techniques.rs (run once with torch + safetensors installed;
the outputs are committed, so the tests never need PyTorch):

- teacher_mlp8.pt           torch.save(state_dict) of an nn.Sequential MLP 784-8-10 (keys 0.*, 2.*)
- teacher_mlp8.safetensors  the same tensors through safetensors.torch.save_file
- teacher_mlp8.json         {"input": 784 floats, "logits": 10 floats} computed by PyTorch
"""
import json
import os

import torch
from safetensors.torch import save_file

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(784, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))
here = os.path.dirname(os.path.abspath(__file__))
state = {k: v.contiguous() for k, v in net.state_dict().items()}
torch.save(state, os.path.join(here, "teacher_mlp8.pt"))
save_file(state, os.path.join(here, "teacher_mlp8.safetensors"))
x = torch.rand(1, 784)
with torch.no_grad():
    y = net(x)
with open(os.path.join(here, "teacher_mlp8.json"), "w") as f:
    json.dump({"input": x[0].tolist(), "logits": y[0].tolist()}, f)
print({k: tuple(v.shape) for k, v in state.items()})
