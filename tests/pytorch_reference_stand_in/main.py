"""A stand-in for the authors' main.py (GGchen1997/GDW-NIPS2021) in the tests of
scripts/pytorch_comparison.py: their names and call signatures, and a step that sleeps
STEP_SECONDS and logs what it was given to calls.jsonl."""

import argparse
import json
import time

import torch

STEP_SECONDS = 0.2
parser = argparse.ArgumentParser()
parser.add_argument("--batch_size", type=int, default=100)
parser.add_argument("--hidden_dim", type=int, default=100)
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--momentum", type=float, default=0.9)
parser.add_argument("--weight-decay", type=float, default=5e-4)
parser.add_argument("--mode", default="gdw")
args = parser.parse_args()
device = torch.device("cpu")


class VNet(torch.nn.Linear):
    def __init__(self, inputs, hidden, outputs):
        super().__init__(inputs, outputs)

    def params(self):
        return self.parameters()


def build_model(args):
    return VNet(3, 0, 10)


def train(train_loader, train_meta_loader, model, vnet, optimizer_model, optimizer_vnet, epoch):
    print(len(train_loader.dataset))
    for (inputs, targets, true_targets, indexs), (x_meta, y_meta) in zip(
        train_loader, train_meta_loader
    ):
        with open("calls.jsonl", "a") as log:
            batch = (inputs, targets, true_targets, indexs, x_meta, y_meta)
            shapes = [list(t.shape) for t in batch]
            log.write(json.dumps([args.mode, args.batch_size, shapes]) + "\n")
        time.sleep(STEP_SECONDS)
