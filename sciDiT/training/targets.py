"""The allow-list of what a config may instantiate, checked before ``hydra.utils.instantiate`` runs.

A Hydra ``_target_`` names any importable callable, so a config file, a command-line override or a
checkpoint's hyper-parameters could otherwise call ``os.system``. :func:`check_config` walks a whole
config (nested dicts and lists, interpolations resolved) and accepts a ``_target_`` only if it is

- a class defined in sciDiT,
- a torch optimiser or learning-rate scheduler (``torch.optim``),
- ``lightning.Trainer``, a Lightning callback or logger,
- Hydra's own basic launcher or sweeper (the defaults of ``hydra.launcher`` / ``hydra.sweeper``);

Python logging configs (Hydra's ``job_logging`` / ``hydra_logging``, which ``logging.config``
turns into objects) may name only ``logging`` classes, no ``()`` factories and no ``ext://`` objects
other than the standard streams. Anything else is one line naming the config key.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from sciDiT.errors import SciDiTInputError

# dotted-path roots a _target_ may start with; only these modules are ever imported to check one
ROOTS = ("sciDiT.", "torch.optim.", "lightning.", "hydra._internal.core_plugins.")
LOGGING_KEYS = ("job_logging", "hydra_logging")
STREAMS = ("ext://sys.stdout", "ext://sys.stderr")


def _locate(path: str) -> Any:
    """The object a dotted path names, importing its module (``path`` already starts with an allowed root)."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(path)


def _allowed_bases() -> tuple[type, ...]:
    import lightning as L
    import torch
    from hydra.plugins.launcher import Launcher
    from hydra.plugins.sweeper import Sweeper
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import Logger

    return (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau, L.Trainer, Callback, Logger,
            Launcher, Sweeper)


def check_target(target: Any, key: str) -> None:
    """One-line error unless ``target`` (the value of config key ``key``) is on the allow-list."""
    if not isinstance(target, str) or not target.startswith(ROOTS):
        raise SciDiTInputError(f"{key}={target!r} is not allowed: a config may instantiate only sciDiT classes, torch optimisers and "
                               "schedulers, lightning.Trainer and Lightning callbacks and loggers")
    try:
        obj = _locate(target)
    except (ImportError, AttributeError):
        raise SciDiTInputError(f"{key}={target!r}: no such class") from None
    if not isinstance(obj, type):
        raise SciDiTInputError(f"{key}={target!r} is not allowed: it is not a class")
    ours = obj.__module__.startswith("sciDiT.") and target.startswith("sciDiT.")
    if not ours and not (obj.__module__.startswith(ROOTS[1:]) and issubclass(obj, _allowed_bases())):
        raise SciDiTInputError(f"{key}={target!r} is not allowed: only sciDiT classes, torch optimisers and schedulers, "
                               "lightning.Trainer and Lightning callbacks and loggers may be instantiated")


def _is_logging_class(path: Any) -> bool:
    import logging

    if not isinstance(path, str) or not path.startswith(("logging.", "logging.handlers.")):
        return False
    try:
        obj = _locate(path)
    except (ImportError, AttributeError):
        return False
    return isinstance(obj, type) and issubclass(obj, (logging.Handler, logging.Formatter, logging.Filter))


def _check_logging(node: Any, key: str) -> None:
    """Python logging config: only ``logging`` classes, no ``()`` factories, no ``ext://`` objects but the streams."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            sub = f"{key}.{k}"
            if k == "()":
                raise SciDiTInputError(f"{sub} is not allowed: logging configs may not name factories")
            if k == "class" and not _is_logging_class(v):
                raise SciDiTInputError(f"{sub}={v!r} is not allowed: logging configs may name only logging handler, formatter and filter classes")
            _check_logging(v, sub)
    elif isinstance(node, Sequence) and not isinstance(node, str):
        for i, v in enumerate(node):
            _check_logging(v, f"{key}[{i}]")
    elif isinstance(node, str) and node.startswith("ext://") and node not in STREAMS:
        raise SciDiTInputError(f"{key}={node!r} is not allowed: logging configs may refer only to {' and '.join(STREAMS)}")


def _plain(cfg: Any, key: str) -> Any:
    """A config as plain dicts/lists with every interpolation resolved (a value Hydra fills at run time stays missing)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

    if not isinstance(cfg, (DictConfig, ListConfig)):
        return cfg
    keys = range(len(cfg)) if isinstance(cfg, ListConfig) else list(cfg.keys())
    out: Any = [] if isinstance(cfg, ListConfig) else {}
    for k in keys:
        sub = f"{key}[{k}]" if isinstance(cfg, ListConfig) else (f"{key}.{k}" if key else str(k))
        try:
            value = cfg[k]
        except (MissingMandatoryValue, InterpolationToMissingValueError):
            value = None
        except Exception as err:
            raise SciDiTInputError(f"{sub}: cannot be resolved to check what it instantiates ({str(err).splitlines()[0]})") from None
        value = _plain(value, sub) if OmegaConf.is_config(value) else value
        if isinstance(out, list):
            out.append(value)
        else:
            out[k] = value
    return out


def check_config(cfg: Any, key: str = "") -> None:
    """Check every ``_target_`` in ``cfg`` (an OmegaConf config or plain dicts/lists) against the allow-list.

    ``key`` is the dotted name of ``cfg`` itself, used in messages (e.g. ``"hyper_parameters"``).
    Hydra's logging configs (``hydra.job_logging``, ``hydra.hydra_logging``) are checked as logging configs.
    """
    _walk(_plain(cfg, key), key)


def _walk(node: Any, key: str) -> None:
    if isinstance(node, Mapping):
        for k, v in node.items():
            sub = f"{key}.{k}" if key else str(k)
            if k == "_target_":
                check_target(v, sub)
            elif k in LOGGING_KEYS and key.split(".")[-1] == "hydra":
                _check_logging(v, sub)
            else:
                _walk(v, sub)
    elif isinstance(node, Sequence) and not isinstance(node, str):
        for i, v in enumerate(node):
            _walk(v, f"{key}[{i}]")
