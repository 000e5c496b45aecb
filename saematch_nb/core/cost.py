"""Per-feature vectors and the squared-distance cost between two SAEs' features.

Convention (docs/ARCHITECTURE.md): feature i of an SAE becomes the concatenation of its folded
decoder row, its folded encoder column and, for ``params="encoder+decoder+bias"``, its folded
b_enc. ``C[i, j] = ||X[i] - Y[j]||² = |X_i|² + |Y_j|² - 2 X_i·Y_j`` (float32 blocks by matmul;
never a Python loop over features); ``mse = C / D``.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from ..errors import InvalidArgumentError
from .weights import SAEWeights, as_weights

PARAMS_CHOICES = ("decoder", "encoder", "encoder+decoder", "encoder+decoder+bias")


def check_params(params: str) -> str:
    if params not in PARAMS_CHOICES:
        raise ValueError(f"params must be one of {PARAMS_CHOICES}, got {params!r}")
    return params


def feature_matrix(weights: Any, params: str = "encoder+decoder", fold: bool = True) -> torch.Tensor:
    """Float32 ``[d_sae, D]`` matrix of per-feature vectors (see module docstring).

    ``fold=True`` folds first (no-op if ``weights.folded``); ``fold=False`` uses the raw
    parameters (the paper's "matched without folding" baseline).
    """
    check_params(params)
    w = as_weights(weights)
    if fold and not w.folded:
        from .fold import fold as _fold

        w = _fold(w)
    parts = []
    if "decoder" in params:
        parts.append(w.W_dec)
    if "encoder" in params:
        parts.append(w.W_enc.T)
    if params.endswith("+bias"):
        parts.append(w.b_enc[:, None])
    return torch.cat([p.to(torch.float32) for p in parts], dim=1).contiguous()


def check_compatible(X: torch.Tensor, Y: torch.Tensor, what: str = "feature matrices") -> None:
    if X.ndim != 2 or Y.ndim != 2 or X.shape[1] != Y.shape[1]:
        raise ValueError(
            f"the two SAEs' {what} have incompatible shapes {tuple(X.shape)} and {tuple(Y.shape)}: "
            "both SAEs must read the same model dimension d_in (and be compared with the same "
            "params); check that they belong to the same model and hook type"
        )


def check_same_d_in(a: SAEWeights, b: SAEWeights) -> None:
    if a.d_in != b.d_in:
        raise ValueError(
            f"SAE A ({a.info.label}) has W_dec of shape {tuple(a.W_dec.shape)} and SAE B "
            f"({b.info.label}) has {tuple(b.W_dec.shape)}: their d_in differ ({a.d_in} vs {b.d_in}). "
            "Match SAEs of the same model (and hook type)."
        )


def parse_device(device: Any) -> torch.device:
    """``device`` as a torch.device, on any machine: a name torch does not know is an
    InvalidArgumentError that says what to pass."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InvalidArgumentError(f"device={device!r} is not a torch device ({e}); use 'cpu', 'cuda' or "
                                   "'cuda:N', or None for a GPU when there is one") from None


def default_device(device: Any = None) -> torch.device:
    """``device`` as a torch.device this machine has; None: CUDA when there is a GPU, else the CPU.
    A name torch does not know, or a GPU this machine lacks, is an InvalidArgumentError that says
    what to pass (torch's own "Torch not compiled with CUDA enabled" would come from inside a solver)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = parse_device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgumentError(f"device={device!r}, but torch {torch.__version__} sees no CUDA GPU here; "
                                       "use device='cpu', or None (a GPU when there is one)")
        n = torch.cuda.device_count()
        if dev.index is not None and 0 < n <= dev.index:
            raise InvalidArgumentError(f"device={device!r}, but torch sees {n} CUDA GPU(s) (cuda:0 to cuda:{n - 1})")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InvalidArgumentError(f"device={device!r}, but this torch has no usable MPS (Apple GPU); use device='cpu'")
    return dev


def default_block_rows(n_b: int, budget_bytes: int = 256 * 2**20) -> int:
    """Rows per block so that one float32 block stays within ``budget_bytes``."""
    return int(max(1, min(65536, budget_bytes // max(1, 4 * n_b))))


def cost_blocks(
    X: torch.Tensor, Y: torch.Tensor, block_rows: int | None = None, device: Any = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(row_start, C[row_start:row_start+rows])`` as float32 tensors on ``device``
    (CUDA when available and ``device`` is None). Clamped at 0 against rounding."""
    check_compatible(X, Y)
    dev = default_device(device)
    Yd = Y.to(dev, torch.float32)
    y2 = (Yd * Yd).sum(1)
    br = block_rows or default_block_rows(Y.shape[0])
    for r0 in range(0, X.shape[0], br):
        xb = X[r0:r0 + br].to(dev, torch.float32)
        x2 = (xb * xb).sum(1)
        c = torch.addmm(x2[:, None] + y2[None, :], xb, Yd.T, alpha=-2.0)
        yield r0, c.clamp_(min=0.0)


def dense_cost(X: torch.Tensor, Y: torch.Tensor, block_rows: int | None = None, device: Any = None,
               progress: bool = False) -> np.ndarray:
    """The full cost matrix as float64 numpy ``[n_a, n_b]`` (for scipy)."""
    check_compatible(X, Y)
    out = np.empty((X.shape[0], Y.shape[0]), dtype=np.float64)
    blocks = cost_blocks(X, Y, block_rows=block_rows, device=device)
    if progress:
        from tqdm.auto import tqdm

        br = block_rows or default_block_rows(Y.shape[0])
        blocks = tqdm(blocks, total=-(-X.shape[0] // br), desc="cost matrix", unit="block")
    for r0, blk in blocks:
        out[r0:r0 + blk.shape[0]] = blk.cpu().numpy()
    return out


def pair_cost(X: torch.Tensor, Y: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``C[rows[k], cols[k]]`` for given pairs (float64), without the full matrix."""
    rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
    cols = torch.as_tensor(np.asarray(cols), dtype=torch.long)
    d = X.cpu()[rows].to(torch.float64) - Y.cpu()[cols].to(torch.float64)
    return (d * d).sum(1).numpy()


# -- each row's two nearest costs (the dense solver's and match()'s alt_mse) ---------------------
def nearest_two(C: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(argmin, smallest, second smallest) per row of a dense cost matrix."""
    n_a, n_b = C.shape
    if n_b < 2:
        return np.zeros(n_a, np.int64), C[:, 0].astype(np.float64), np.full(n_a, np.inf)
    two = np.argpartition(C, 1, axis=1)[:, :2]
    v = np.take_along_axis(C, two, axis=1)
    order = np.argsort(v, axis=1, kind="stable")
    two = np.take_along_axis(two, order, axis=1)
    v = np.take_along_axis(v, order, axis=1)
    return two[:, 0].astype(np.int64), v[:, 0].astype(np.float64), v[:, 1].astype(np.float64)


def nearest_two_costs(X: torch.Tensor, Y: torch.Tensor, *, device: Any = None,
                      block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(argmin, smallest, second smallest) of ``C = |X_i - Y_j|²`` per row, by a blocked pass."""
    n_a, n_b = X.shape[0], Y.shape[0]
    near = np.zeros(n_a, np.int64)
    best = np.full(n_a, np.inf)
    second = np.full(n_a, np.inf)
    k = min(2, n_b)
    for r0, blk in cost_blocks(X, Y, block_rows=block_rows, device=device):
        v, j = torch.topk(blk, k, dim=1, largest=False)
        rows = slice(r0, r0 + blk.shape[0])
        near[rows] = j[:, 0].cpu().numpy()
        best[rows] = v[:, 0].double().cpu().numpy()
        if k > 1:
            second[rows] = v[:, 1].double().cpu().numpy()
    return near, best, second


def alt_costs(col: np.ndarray, nearest: np.ndarray, best: np.ndarray, second: np.ndarray) -> np.ndarray:
    """min over j != col[i] of C_ij, from each row's two smallest costs."""
    col = np.asarray(col)
    return np.where(col == nearest, second, best)
