"""Load the official SMPL / MANO pickles without chumpy and without running pickled code.

The official files are Python-2 pickles whose arrays are partly chumpy objects (`chumpy.ch.Ch`,
`chumpy.reordering.Select`) and whose J_regressor is a scipy sparse matrix. chumpy does not import on
Python >= 3.11 / numpy >= 1.24, and a plain `pickle.load` runs whatever a crafted file asks for. This
unpickler allow-lists the few globals those files use, turns chumpy objects into plain arrays, and refuses
every other global, so nothing in the file can execute code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for a global outside the allow-list (a crafted or foreign pickle)."""


class _Placeholder:
    """Stands in for a chumpy or scipy object: accepts any constructor arguments, keeps the pickled state."""

    kind = "object"

    def __init__(self, *args, **kwargs):
        self.args = args
        self.state = {}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {"state": state}


def _placeholder_class(kind: str) -> type:
    return type(f"{kind}Placeholder", (_Placeholder,), {"kind": kind})


# Only these globals may appear. numpy's array reconstruction is data-only; chumpy and scipy become
# placeholders (their classes are never imported, so their code never runs).
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): np.core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): np.core.multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Protocol 0/1 pickles build new-style objects through copyreg; the class itself still passes find_class.
    ("copyreg", "_reconstructor"): __import__("copyreg")._reconstructor,
    ("builtins", "object"): object,
    # Python 3 writes bytes into protocol-2 pickles as codecs.encode(text, "latin1"): a pure conversion.
    ("_codecs", "encode"): __import__("codecs").encode,
}
_CHUMPY_KINDS = {"Ch": "Ch", "Select": "Select", "Reshape": "Reshape", "transpose": "Transpose"}
_SPARSE_KINDS = {"csc_matrix", "csr_matrix", "coo_matrix"}


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[(module, name)]
        if module.startswith("chumpy") and name in _CHUMPY_KINDS:
            return _placeholder_class(_CHUMPY_KINDS[name])
        if module.startswith("scipy.sparse") and name in _SPARSE_KINDS:
            return _placeholder_class(name)
        raise UnsafePickleError(f"refused global {module}.{name}: not part of an SMPL/MANO model file")


def _sparse_to_dense(obj: _Placeholder) -> np.ndarray:
    s = obj.state
    shape = tuple(s["_shape"])
    data, indices = np.asarray(s["data"]), np.asarray(s["indices"])
    dense = np.zeros(shape, dtype=data.dtype)
    if obj.kind == "coo_matrix":
        dense[np.asarray(s["row"]), np.asarray(s["col"])] = data
        return dense
    indptr = np.asarray(s["indptr"])
    major = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    if obj.kind == "csc_matrix":
        dense[indices, major] = data
    else:
        dense[major, indices] = data
    return dense


def _to_array(obj):
    """Placeholders -> numpy arrays (recursively); everything else unchanged."""
    if not isinstance(obj, _Placeholder):
        return obj
    s = obj.state
    if obj.kind == "Ch":
        return np.asarray(_to_array(s["x"]))
    if obj.kind == "Select":
        a = np.asarray(_to_array(s["a"]))
        return a.ravel()[np.asarray(s["idxs"])].reshape(s["preferred_shape"])
    if obj.kind == "Reshape":
        return np.asarray(_to_array(s["a"])).reshape(s["newshape"])
    if obj.kind == "Transpose":
        return np.transpose(np.asarray(_to_array(s["a"])), s.get("axes"))
    if obj.kind in _SPARSE_KINDS:
        return _sparse_to_dense(obj)
    raise TypeError(f"cannot convert a pickled {obj.kind} to an array")


def load_model_pickle(path: str | Path) -> dict[str, object]:
    """Read an SMPL/MANO .pkl into a dict of numpy arrays (and plain values). Raises UnsafePickleError for a
    file that names any other global, and pickle/EOF errors for a truncated one."""
    data = Path(path).read_bytes()
    loaded = _AllowListUnpickler(io.BytesIO(data), encoding="latin1").load()
    if not isinstance(loaded, dict):
        raise UnsafePickleError(f"expected a dict of model arrays, found a pickled {type(loaded).__name__}")
    return {key: _to_array(value) for key, value in loaded.items()}
