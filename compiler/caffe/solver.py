"""A Caffe solver.prototxt → the spec's `train:` section.

Caffe counts iterations; netspec counts epochs. With the training set's size (`--train-size N`), iterations
become epochs (steps per epoch = N / batch size). Without it the run keeps Caffe's length as `train.max_steps`,
which only a policy that needs no iteration count can go with (fixed, poly).
"""
from __future__ import annotations

import math
from typing import Any

from netspec.compiler.caffe.textformat import CaffeError, Message

OPTIMIZERS = {"SGD": "sgd", "NESTEROV": "sgd", "NESTEROV'": "sgd", "ADAM": "adam"}


def read_solver(solver: Message, batch_size: int | None, train_size: int | None) -> tuple[dict[str, Any], list[str]]:
    """(train: keys, comments). `batch_size` is the data layer's (Caffe's batch per iteration)."""
    notes: list[str] = []
    kind = str(solver.get("type", solver.get("solver_type", "SGD"))).upper()
    if kind not in OPTIMIZERS:
        raise CaffeError(f"solver type '{kind}' has no netspec counterpart",
                        "netspec's optimizers are sgd (Caffe SGD, Nesterov) and adam",
                        solver.pos("type") if solver.has("type") else solver.pos("solver_type"))
    lr = solver.get("base_lr")
    if lr is None:
        raise CaffeError("the solver has no base_lr", "add base_lr: 0.01", solver.pos())
    optimizer: dict[str, Any] = {"type": OPTIMIZERS[kind], "lr": lr}
    if kind == "ADAM":
        optimizer["betas"] = [solver.get("momentum", 0.9), solver.get("momentum2", 0.999)]
        optimizer["weight_decay"] = solver.get("weight_decay", 0.0)
    else:
        optimizer["momentum"] = solver.get("momentum", 0.0)
        optimizer["weight_decay"] = solver.get("weight_decay", 0.0)
        if kind.startswith("NESTEROV"):
            optimizer["nesterov"] = True
    if solver.get("regularization_type", "L2") != "L2":
        raise CaffeError(f"regularization_type {solver.get('regularization_type')} is not supported",
                        "netspec's weight decay is L2", solver.pos("regularization_type"))
    if solver.get("clip_gradients", -1) >= 0:
        notes.append(f"clip_gradients {solver.get('clip_gradients')} dropped: netspec does not clip gradients")
    if solver.get("iter_size", 1) != 1:
        notes.append(f"iter_size {solver.get('iter_size')}: Caffe accumulates that many batches per step; "
                     "train.batch_size is one batch")
    train: dict[str, Any] = {}
    steps_per_epoch = None
    if train_size is not None:
        if not batch_size:
            raise CaffeError("--train-size needs the batch size, and the net's data layer gives none",
                            "give the data layer a batch_size", solver.pos())
        steps_per_epoch = train_size / batch_size
    policy_name = solver.get("lr_policy", "fixed")
    max_iter = solver.get("max_iter")

    def epochs(iterations: int, what: str) -> int:
        if steps_per_epoch is None:
            raise CaffeError(f"the solver's {what} counts iterations ({iterations}); netspec's schedules count "
                            "epochs", "give --train-size N (training examples in one epoch) to convert",
                            solver.pos(what.split()[0]))
        value = max(1, round(iterations / steps_per_epoch))
        if abs(value * steps_per_epoch - iterations) > 0.5:
            notes.append(f"{what} {iterations} iterations = {iterations / steps_per_epoch:.2f} epochs → {value}")
        return value

    def per_epoch(value: float, what: str, power: bool) -> float:
        if steps_per_epoch is None:
            raise CaffeError(f"lr_policy '{policy_name}' is per iteration; netspec's schedules count epochs",
                            "give --train-size N (training examples in one epoch) to convert", solver.pos(what))
        return value ** steps_per_epoch if power else value * steps_per_epoch

    gamma = solver.get("gamma")
    if policy_name == "fixed":
        policy: dict[str, Any] = {"type": "constant"}
    elif policy_name == "step":
        policy = {"type": "step", "step_size": epochs(solver.get("stepsize", 0) or 1, "stepsize"),
                  "gamma": gamma if gamma is not None else 0.1}
    elif policy_name == "multistep":
        policy = {"type": "multistep", "milestones": [epochs(v, "stepvalue") for v in solver.all("stepvalue")],
                  "gamma": gamma if gamma is not None else 0.1}
    elif policy_name == "poly":
        policy = {"type": "poly", "power": solver.get("power", 1.0)}
    elif policy_name == "inv":
        policy = {"type": "inv", "gamma": per_epoch(gamma or 0.0, "gamma", False), "power": solver.get("power", 1.0)}
    elif policy_name == "exp":
        policy = {"type": "exp", "gamma": per_epoch(gamma if gamma is not None else 1.0, "gamma", True)}
    else:
        raise CaffeError(f"lr_policy '{policy_name}' has no netspec counterpart",
                        "netspec converts fixed, step, multistep, poly, inv and exp", solver.pos("lr_policy"))
    if max_iter:
        if steps_per_epoch is not None:
            train["epochs"] = max(1, math.ceil(max_iter / steps_per_epoch))
        else:
            train["max_steps"] = max_iter
    if batch_size:
        train["batch_size"] = batch_size
    train["optimizer"] = optimizer
    train["lr_schedule"] = policy
    if solver.get("random_seed", -1) >= 0:
        train["seed"] = solver.get("random_seed")
    return train, notes
