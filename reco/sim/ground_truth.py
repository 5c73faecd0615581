"""The simulator's ground truth: what each MovieLens-100k user really likes.

Fitted on ALL 100k ratings, including each user's chronologically last two items (the validation and test
items of the leave-one-out protocol) that the served model never trains on, so the simulated users hold
preferences the served model can only discover from their clicks. The model is a truncated SVD (rank
`k`) of the user x item matrix of ratings centred at 3 (a 5 is strong evidence of liking, a 1 of
disliking; unrated = 0), and the affinity of (user, item) is the reconstructed entry, standardised over
the user's row and clipped to [-3, 3]:

    P(click | user, item, position) = sigmoid(scale * z(user, item) + offset) * position_bias(position)
    position_bias(p) = 1 / log2(p + 1)

`offset` sets the base rate (an average item at the top slot: sigmoid(offset)); `scale` how much taste
matters. Every draw goes through the caller's seeded `numpy.random.Generator`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def position_bias(positions: np.ndarray) -> np.ndarray:
    """1 / log2(position + 1): 1.0 at the top slot, 0.63 at the second, 0.39 at the sixth.

    >>> position_bias(np.array([1, 3])).round(3).tolist()
    [1.0, 0.5]
    """
    return 1.0 / np.log2(np.asarray(positions, dtype=np.float64) + 1.0)


class GroundTruth:
    """User x item click propensities from a rank-`k` SVD of all MovieLens ratings.

    >>> gt = GroundTruth.from_ratings(["u1", "u1", "u2"], ["a", "b", "a"], [5.0, 1.0, 4.0], k=1)
    >>> p = gt.p_click("u1", ["a", "b"], [1, 1])
    >>> bool(p[0] > p[1]), bool(gt.p_click("u1", ["a"], [1])[0] > gt.p_click("u1", ["a"], [3])[0])
    (True, True)
    """

    def __init__(self, users: list[str], items: list[str], z: np.ndarray, scale: float = 1.0, offset: float = -2.0):
        self.users = users
        self.items = items
        self.scale = scale
        self.offset = offset
        self._z = z.astype(np.float32)
        self._u = {u: i for i, u in enumerate(users)}
        self._i = {it: j for j, it in enumerate(items)}

    @classmethod
    def from_ratings(
        cls, users: list[str], items: list[str], ratings: list[float], k: int = 24, **kw: float
    ) -> GroundTruth:
        u_ids = sorted(set(users))
        i_ids = sorted(set(items))
        u_idx = {u: n for n, u in enumerate(u_ids)}
        i_idx = {it: n for n, it in enumerate(i_ids)}
        m = np.zeros((len(u_ids), len(i_ids)), np.float64)
        m[[u_idx[u] for u in users], [i_idx[i] for i in items]] = np.asarray(ratings, np.float64) - 3.0
        k = max(1, min(k, min(m.shape) - 1))
        if min(m.shape) > 2 * k:  # truncated SVD: the k leading factors only (fast on the full data)
            from scipy.sparse.linalg import svds

            left, s, right = svds(m, k=k, random_state=0)
        else:
            left, s, right = np.linalg.svd(m, full_matrices=False)
            left, s, right = left[:, :k], s[:k], right[:k]
        recon = (left * s) @ right
        # Standardised per user (every user has favourites and dislikes, whatever their rating volume),
        # clipped at 3 sd so that a few extreme pairs do not decide the click rates.
        sd = recon.std(axis=1, keepdims=True)
        z = np.clip((recon - recon.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0), -3.0, 3.0)
        return cls(u_ids, i_ids, z, **kw)

    @classmethod
    def fit(cls, data_dir: str | Path, k: int = 24, **kw: float) -> GroundTruth:
        """Fit on `ml-100k.inter` (RecBole atomic file) in `data_dir`."""
        import pandas as pd

        path = Path(data_dir) / "ml-100k.inter"
        if not path.is_file():
            raise FileNotFoundError(f"MovieLens-100k interactions not found: {path}")
        df = pd.read_csv(path, sep="\t", dtype=str)
        df.columns = [c.split(":")[0] for c in df.columns]
        return cls.from_ratings(list(df["user_id"]), list(df["item_id"]), df["rating"].astype(float).tolist(), k, **kw)

    def relevance(self, user: str, items: list[str]) -> np.ndarray:
        """P(click) at the top slot; unknown users or items get the base rate."""
        row = self._u.get(user)
        cols = np.array([self._i.get(i, -1) for i in items])
        z = np.zeros(len(items), np.float32)
        if row is not None:
            known = cols >= 0
            z[known] = self._z[row, cols[known]]
        return 1.0 / (1.0 + np.exp(-(self.scale * z + self.offset)))

    def p_click(self, user: str, items: list[str], positions: list[int] | np.ndarray) -> np.ndarray:
        return self.relevance(user, items) * position_bias(np.asarray(positions))

    def top_items(self, user: str, n: int) -> list[str]:
        """The user's n most liked items (an oracle: used to seed sessions and in tests)."""
        row = self._z[self._u[user]]
        return [self.items[j] for j in np.argsort(-row)[:n]]
