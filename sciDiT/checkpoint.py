"""Safe checkpoint reading: every sciDiT checkpoint load goes through :func:`load_checkpoint`.

A ``.ckpt`` is a pickle, and a pickle can run any code when it is opened. sciDiT therefore reads
checkpoints only with ``torch.load(weights_only=True)``: tensors, plain containers (dict, list,
tuple, OrderedDict), numbers, strings, None and torch's dtype/device/size types, plus the types in
:data:`SAFE_GLOBALS` (empty: Lightning and sciDiT checkpoints hold nothing else; hyper-parameters are
plain dicts because the entry point instantiates with ``_convert_="all"``). A file holding anything
else is refused with one line naming the file and the first offending type, and nothing in it runs.

Files written elsewhere with a few more data types inside (OmegaConf configs, enums, numpy arrays,
paths) can be converted to plain data; conversion is still a weights-only load, admitting only those
data types (:func:`convertible_globals`), so it runs no code from the file either::

    python -m sciDiT.checkpoint check FILE         # does FILE load safely, and which stage is it?
    python -m sciDiT.checkpoint convert OLD NEW    # rewrite OLD's OmegaConf/enum/numpy/path objects as plain data
"""

from __future__ import annotations

import enum
import os
import pickle
import re
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import torch

from sciDiT.errors import SciDiTInputError

# Types beyond torch's weights-only defaults that may appear in a checkpoint. None are needed: the
# checkpoints of every stage were inspected with torch.serialization.get_unsafe_globals_in_checkpoint.
SAFE_GLOBALS: list[Any] = []

# What each stage's checkpoint is called in messages.
STAGE_NAMES = {"vae": "VAE-stage", "dit": "DiT-stage", "cell_vae": "cell VAE-stage", "cell_dit": "cell DiT-stage"}

CONVERT_HINT = "if it holds only configs, enums, paths or numpy data, convert it with `python -m sciDiT.checkpoint convert OLD NEW`"

# What convert admits besides torch's weights-only defaults: data classes only, never a function.
_CONVERTIBLE_NAMES = {
    "builtins": {"list", "dict", "set", "frozenset", "tuple", "int", "float", "complex", "str", "bytes", "bool"},
    "typing": {"Any"},
    "collections": {"OrderedDict", "defaultdict"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"},
    "numpy": {"ndarray", "dtype"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
}
_CONVERTIBLE_MODULES = ("omegaconf.dictconfig", "omegaconf.listconfig", "omegaconf.nodes", "omegaconf.base", "numpy.dtypes")


def convertible_globals(names: Sequence[str], path: Path) -> list[Any]:
    """The objects behind ``names`` (globals a pickle references) if all are data types convert admits.

    Admitted: the builtin/collection/path/numpy data types of ``_CONVERTIBLE_NAMES``, OmegaConf's
    container and node classes, and Enum subclasses of modules already imported (nothing new is
    imported for the check). Anything else is a one-line error naming it: the file is not converted.
    """
    import importlib

    found = []
    for name in names:
        module, _, attr = name.rpartition(".")
        loaded = sys.modules.get(module)
        if loaded is None and (module in _CONVERTIBLE_NAMES or module in _CONVERTIBLE_MODULES):
            with warnings.catch_warnings():  # a fixed, known module (e.g. numpy.core's deprecation alias)
                warnings.simplefilter("ignore")
                loaded = importlib.import_module(module)
        obj = getattr(loaded, attr, None) if loaded is not None else None
        named = attr in _CONVERTIBLE_NAMES.get(module, ()) or (module in _CONVERTIBLE_MODULES and isinstance(obj, type))
        if obj is None or not (named or (isinstance(obj, type) and issubclass(obj, enum.Enum))):
            raise SciDiTInputError(f"cannot convert: it holds {name}, which is not one of the data types convert admits "
                                   "(configs, enums, paths, numpy data)", path)
        found.append(obj)
    return found


def _unsafe_globals(path: Path) -> list[str]:
    """The non-allow-listed globals a checkpoint's pickle names (read from its opcodes, nothing executed)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: the legacy format cannot be scanned
        return []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    return [g for g in found if g not in allowed]


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """A checkpoint's contents, loaded without executing code (see module docstring).

    ``what`` names the file in messages (e.g. ``"VAE checkpoint (dit.vae_ckpt)"``). Raises
    SciDiTInputError (one line naming the file) for a missing, unreadable, truncated or unsafe file.
    """
    path = Path(path)
    if not path.exists():
        raise SciDiTInputError(f"{what} not found", path)
    if not path.is_file():
        raise SciDiTInputError(f"{what} is not a file", path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before it refuses them
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.findall(r"GLOBAL (\S+)", str(err)) or _unsafe_globals(path)
        if unsafe:
            raise SciDiTInputError(f"refused to load: the {what} holds Python objects beyond tensors and plain data ({', '.join(unsafe[:3])}), "
                                   f"which could run code; {CONVERT_HINT}", path) from None
        raise SciDiTInputError(f"not a readable {what} (not a torch checkpoint: its pickle holds instructions torch's safe loader does not accept)", path) from None
    except PermissionError:
        raise SciDiTInputError(f"{what} is not readable (permission denied)", path) from None
    except Exception as err:  # zip/EOF/runtime errors of many types: not a checkpoint, or a truncated one
        raise SciDiTInputError(f"not a readable {what} (not a torch checkpoint, or truncated: {_first_line(err)})", path) from None
    if not isinstance(raw, dict):
        raise SciDiTInputError(f"not a sciDiT {what}: it holds a {type(raw).__name__}, not a dict of weights and hyper-parameters", path)
    return raw


def _first_line(err: BaseException) -> str:
    """The first sentence of an error message (torch's run on for several)."""
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(err).__name__


def checkpoint_stage(ckpt: Mapping[str, Any]) -> str | None:
    """Which training stage wrote ``ckpt``: ``vae``, ``dit``, ``cell_vae``, ``cell_dit``, or None if none.

    A DiT stage's state holds ``model.dit.*`` weights, a VAE stage's only other ``model.*`` weights; a
    cell stage stores the gene vocabulary (``model_info``) in its hyper-parameters.
    """
    state, hparams = ckpt.get("state_dict"), ckpt.get("hyper_parameters")
    if not isinstance(state, Mapping) or not isinstance(hparams, Mapping):
        return None
    keys = [k for k in state if isinstance(k, str)]
    cell = bool(hparams.get("model_info"))
    if any(k.startswith("model.dit.") for k in keys):
        return "cell_dit" if cell else "dit"
    if any(k.startswith("model.") for k in keys):
        return "cell_vae" if cell else "vae"
    return None


def require_stage(ckpt: Mapping[str, Any], stage: str, path: str | Path, hint: str = "") -> None:
    """One-line error unless ``ckpt`` was written by ``stage`` (``hint`` says which file the user wants)."""
    found = checkpoint_stage(ckpt)
    if found == stage:
        return
    got = f"a {STAGE_NAMES[found]} checkpoint" if found else "not a sciDiT checkpoint (no model weights and hyper-parameters)"
    raise SciDiTInputError(f"{got}, but a {STAGE_NAMES[stage]} checkpoint is needed here{'; ' + hint if hint else ''}", path)


def load_vae_checkpoint(path: str, stage: str = "vae", what: str = "dit.vae_ckpt") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The VAE's state dict (keys ``model.*`` of the VAE module) and hyper-parameters from a ``stage`` checkpoint,
    or, for ``stage="vae"``, the VAE inside a DiT-stage checkpoint or shipped model (to train a new DiT on it).

    Read without executing code (:func:`load_checkpoint`); a missing, unreadable or
    unsafe file, or a checkpoint of another stage, is one line naming the file and ``what`` read it.
    """
    ckpt = load_checkpoint(path, f"VAE checkpoint ({what})")
    if stage == "vae" and checkpoint_stage(ckpt) == "dit":
        state = {k.removeprefix("model.vae."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.vae.")}
        return state, {"vae": dict(ckpt["hyper_parameters"]["vae"])}
    require_stage(ckpt, stage, path, f"{what} takes <output_dir>/vae/checkpoints/*.ckpt")
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return state, dict(ckpt["hyper_parameters"])


def load_vae_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """Load VAE weights into ``model``; one line naming the file when they do not fit its configured size."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise SciDiTInputError(f"VAE checkpoint weights do not fit the configured VAE (model.vae): {str(err).splitlines()[0]}", path) from None


# -- EMA weights in DiT-stage files ----------------------------------------------------------------

EMA_PREFIX, DIT_PREFIX = "ema.module.", "model.dit."


def slim_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A DiT module's state dict with the EMA weights as ``model.dit.*`` and no separate EMA copy."""
    ema = {DIT_PREFIX + k.removeprefix(EMA_PREFIX): v for k, v in state.items() if k.startswith(EMA_PREFIX)}
    if not ema:
        raise SciDiTInputError("the checkpoint has no EMA weights (ema.module.*) to ship")
    kept = {k: v for k, v in state.items() if not k.startswith((EMA_PREFIX, DIT_PREFIX))}
    return {**kept, **ema, "ema.num_updates": state.get("ema.num_updates", torch.zeros((), dtype=torch.long))}


def restore_ema(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`slim_state` for loading: the EMA copy is the shipped ``model.dit.*`` weights."""
    if any(k.startswith(EMA_PREFIX) for k in state):
        return state
    ema = {EMA_PREFIX + k.removeprefix(DIT_PREFIX): v for k, v in state.items() if k.startswith(DIT_PREFIX)}
    return {**state, **ema}


# -- conversion of trusted files ------------------------------------------------------------------


LATENT_STAT_TOLERANCE = 0.05  # latent mean shift (in stds) and |log std ratio| that still count as the same latents


def latent_stat_mismatch(mean: torch.Tensor, std: torch.Tensor, other_mean: torch.Tensor, other_std: torch.Tensor) -> str | None:
    """Why latents standardised by ``other_mean`` / ``other_std`` are not those of ``mean`` / ``std`` (how far apart,
    against :data:`LATENT_STAT_TOLERANCE`), or None when they are the same latents: a guide or a latent head trained
    on other latents does not fit a model."""
    shift = ((other_mean - mean) / std).abs().max().item()
    scale = (other_std / std).log().abs().max().item()
    if max(shift, scale) <= LATENT_STAT_TOLERANCE:
        return None
    return f"mean by {shift:.3f} std, log std by {scale:.3f}; tolerance {LATENT_STAT_TOLERANCE}"


def cast_floats(state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``state`` with its floating-point tensors in ``dtype`` (packed weights are stored in bfloat16, run in float32)."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def build_module(cls: type[torch.nn.Module], hparams: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
                 source: str | os.PathLike) -> torch.nn.Module:
    """``cls(**hparams)`` holding ``state_dict`` (floats cast to float32: packed copies are bfloat16), in eval mode;
    one line naming ``source`` when the weights do not fit the sizes."""
    try:
        model = cls(**hparams)
        model.load_state_dict(cast_floats(state_dict, torch.float32))
    except (RuntimeError, TypeError) as err:
        raise SciDiTInputError(f"its weights do not fit its sizes: {str(err).splitlines()[0]}", source) from None
    return model.eval()


def to_plain(obj: Any, key: str = "checkpoint") -> Any:
    """``obj`` as tensors and plain containers/scalars only (what :func:`load_checkpoint` accepts).

    OmegaConf containers become dicts/lists, mappings dicts, enums their values, paths strings,
    numpy arrays/scalars tensors/numbers. Anything else is an error naming its ``key``.
    """
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, torch.dtype, torch.device, torch.Size)):
        return obj
    if type(obj).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return to_plain(OmegaConf.to_container(obj, resolve=True), key)
    if isinstance(obj, enum.Enum):
        return to_plain(obj.value, key)
    if isinstance(obj, PurePath):
        return str(obj)
    if type(obj).__module__ == "numpy":
        import numpy as np

        if isinstance(obj, np.ndarray):
            return torch.from_numpy(obj.copy()) if obj.dtype != object else to_plain(obj.tolist(), key)
        if isinstance(obj, np.generic):
            return obj.item()
    if isinstance(obj, Mapping):
        return {to_plain(k, f"{key} key"): to_plain(v, f"{key}.{k}") for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_plain(v, f"{key}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, (Sequence, set, frozenset)):
        return [to_plain(v, f"{key}[{i}]") for i, v in enumerate(obj)]
    raise SciDiTInputError(f"{key} holds a {type(obj).__module__}.{type(obj).__qualname__}, which has no plain-data form")


def convert(old: str | Path, new: str | Path) -> Path:
    """Rewrite checkpoint ``old`` as plain data at ``new`` (atomically), which then loads with :func:`load_checkpoint`.

    ``old`` is read weights-only with just the data types of :func:`convertible_globals` admitted, so
    no code from it runs; a file naming anything else is refused, not converted.
    """
    old, new = Path(old), Path(new)
    if not old.is_file():
        raise SciDiTInputError("checkpoint not found", old)
    if new.resolve() == old.resolve():
        raise SciDiTInputError("write the converted checkpoint to a new file, not over the original", new)
    if not new.parent.is_dir():
        raise SciDiTInputError("output folder does not exist", new.parent)
    try:
        admitted = convertible_globals(torch.serialization.get_unsafe_globals_in_checkpoint(old), old)
    except SciDiTInputError:
        raise
    except Exception as err:  # not a zip checkpoint
        raise SciDiTInputError(f"not a readable checkpoint ({type(err).__name__}: {_first_line(err)})", old) from None
    try:
        with torch.serialization.safe_globals(admitted), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = torch.load(old, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SciDiTInputError(f"not a readable checkpoint ({type(err).__name__}: {_first_line(err)})", old) from None
    plain = to_plain(raw)
    fd, tmp = tempfile.mkstemp(dir=new.parent, prefix=f".{new.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(plain, fh)
            fh.flush()
            os.fsync(fh.fileno())
        load_checkpoint(tmp)  # the result must load safely
        os.replace(tmp, new)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return new


USAGE = "usage: python -m sciDiT.checkpoint check FILE | convert OLD NEW   (convert admits configs, enums, paths and numpy data)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["check"] and len(args) == 2:
            stage = checkpoint_stage(load_checkpoint(args[1]))
            print(f"{args[1]}: loads safely; {STAGE_NAMES[stage] + ' checkpoint' if stage else 'not a sciDiT stage checkpoint'}")
            return 0
        if args[:1] == ["convert"] and len(args) == 3:
            print(f"[sciDiT] wrote {convert(args[1], args[2])} (plain data: loads without running code)")
            return 0
        print(USAGE, file=sys.stderr)
        return 2
    except SciDiTInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
