"""Population analysis: which (protocol, label) tracks an outcome across a collection (no Qt).

For every image and every (protocol, label): the area (pixels x the physical pixel area from the
layer scale) and the mean intensity. Given an outcome per image (a CSV table: one row per image,
an image name or index column, outcome columns), each label's area (or intensity) is tested for
association with the outcome with ``scipy.stats``: Spearman's rank correlation for a numeric
outcome, Mann-Whitney U for two groups, Kruskal-Wallis for more; p-values are corrected for the
number of labels tested with Benjamini-Hochberg (``scipy.stats.false_discovery_control``), and
labels are ranked by corrected p, then by effect size.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

MEASURES = ("area", "intensity")
ID_COLUMNS = ("image", "name", "file", "filename", "id", "index")
MISSING = {"", "na", "nan", "none", "null", "n/a", "-"}
MIN_IMAGES = 3


# --------------------------------------------------------------------- measuring
@dataclass
class Measurements:
    """Per (protocol, label, image) pixel counts and intensity sums of one set.

    ``pixels``/``sums`` have shape (M, K, S); label ids are the model's labels plus one (as in the
    explorer's layers); ``pixel_area`` is the physical area of one pixel (1 without a scale).
    """

    pixels: np.ndarray
    sums: np.ndarray
    image_names: list[str]
    pixel_area: float = 1.0
    protocols: list[int] = field(default_factory=list)  # protocol number (1-based) of each row of M
    names: dict[int, str] = field(default_factory=dict)  # label id -> name (when known)

    @property
    def area(self) -> np.ndarray:
        return self.pixels * self.pixel_area

    @property
    def intensity(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.pixels > 0, self.sums / np.maximum(self.pixels, 1), np.nan)

    def values(self, measure: str) -> np.ndarray:
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
        return self.area if measure == "area" else self.intensity

    def rows(self) -> list[dict]:
        """One row per (image, protocol, label present): the long table written as CSV."""
        out = []
        m, k, s = self.pixels.shape
        for i in range(s):
            for p in range(m):
                for lab in np.flatnonzero(self.pixels[p, :, i]):
                    out.append({"image": self.image_names[i], "protocol": self.protocols[p], "label": int(lab) + 1,
                                "name": self.names.get(int(lab) + 1, ""), "pixels": int(self.pixels[p, lab, i]),
                                "area": float(self.pixels[p, lab, i] * self.pixel_area),
                                "mean_intensity": float(self.sums[p, lab, i] / self.pixels[p, lab, i])})
        return out


def pixel_area(scale: Sequence[float] | None) -> float:
    """Physical area of one pixel from a layer scale (the last two axes)."""
    if scale is None:
        return 1.0
    sy, sx = (float(v) for v in tuple(scale)[-2:])
    if not (sy > 0 and sx > 0):
        raise ValueError(f"pixel size must be positive, got {sy} x {sx}")
    return sy * sx


def measure_labels(labels, images, *, scale=None, image_names: Sequence[str] | None = None,
                   protocols: Sequence[int] | None = None, names: dict | None = None, k: int | None = None) -> Measurements:
    """Measure label maps already computed.

    Arguments:
        labels: (M, S, H, W) model labels 0..K-1 (as ``segment_set`` returns), or a list of
            (M, H, W) per image.
        images: the intensity images, (S, H, W) or a list of 2D arrays (RGB is converted).
        scale: the layer scale (pixel size); image_names: one per image (default "0", "1", ...).
    """
    from .preprocess import to_image_list

    items, _ = to_image_list(images)
    per_image = [labels[:, i] for i in range(labels.shape[1])] if isinstance(labels, np.ndarray) else list(labels)
    if len(per_image) != len(items):
        raise ValueError(f"{len(per_image)} label maps for {len(items)} images")
    k = k or int(max(int(p.max()) for p in per_image)) + 1
    acc = _Accumulator(per_image[0].shape[0], k, len(items))
    for i, (lab, image) in enumerate(zip(per_image, items)):
        acc.add(i, lab, image)
    return acc.result(image_names, scale, protocols, names)


def measure_set(images, m: int = 8, k: int = 20, *, seed: int = 0, model=None, protocol=None, scale=None,
                image_names: Sequence[str] | None = None, progress: Callable[[int, int], None] | None = None) -> Measurements:
    """Segment ``images`` (all M protocols, or one saved :class:`~.protocol.Protocol`) and measure,
    image by image: label maps are never kept."""
    from .preprocess import to_image_list

    items, _ = to_image_list(images)
    if protocol is not None:
        from .protocol import iter_apply

        ids = protocol.output_ids()
        acc = _Accumulator(1, max(ids), len(items))
        for i, lab in iter_apply(protocol, items, model=model):
            keep = lab > 0  # background (0, incl. labels sent there) is not measured
            acc.add(i, np.where(keep, lab.astype(np.int64) - 1, -1)[None], items[i])
            if progress is not None:
                progress(i + 1, len(items))
        return acc.result(image_names, scale, [protocol.index + 1], protocol.label_names())
    from .inference import iter_segment_set

    acc = _Accumulator(m, k, len(items))
    for i, lab, _ in iter_segment_set(items, m, k, model=model, seed=seed):
        acc.add(i, lab, items[i])
        if progress is not None:
            progress(i + 1, len(items))
    return acc.result(image_names, scale, None, None)


class _Accumulator:
    def __init__(self, m, k, s):
        self.m, self.k = m, k
        self.pixels = np.zeros((m, k, s), np.int64)
        self.sums = np.zeros((m, k, s), np.float64)

    def add(self, i, labels, image):
        image = np.asarray(image, np.float64)
        for p in range(self.m):
            lab = np.asarray(labels[p]).ravel().astype(np.int64)
            valid = lab >= 0
            self.pixels[p, :, i] = np.bincount(lab[valid], minlength=self.k)[: self.k]
            self.sums[p, :, i] = np.bincount(lab[valid], weights=image.ravel()[valid], minlength=self.k)[: self.k]

    def result(self, image_names, scale, protocols, names):
        s = self.pixels.shape[2]
        names_list = [str(n) for n in image_names] if image_names is not None else [str(i) for i in range(s)]
        if len(names_list) != s:
            raise ValueError(f"{len(names_list)} image names for {s} images")
        return Measurements(self.pixels, self.sums, names_list, pixel_area(scale),
                            list(protocols) if protocols is not None else list(range(1, self.m + 1)), dict(names or {}))


# --------------------------------------------------------------------- outcome table
@dataclass
class OutcomeTable:
    """A CSV with one row per image: ``id_column`` names the image, the others are outcomes."""

    columns: list[str]
    rows: list[dict]
    id_column: str
    source: str = "outcome table"

    def outcomes(self) -> list[str]:
        return [c for c in self.columns if c != self.id_column]


def read_outcomes(path: str | Path, id_column: str | None = None) -> OutcomeTable:
    """Read an outcome CSV; the id column is ``id_column`` or the first of image/name/file/id/index
    (case-insensitive), else the first column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"outcome table not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        sample = fh.read(4096)
        fh.seek(0)
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        reader = csv.DictReader(fh, dialect=dialect)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    if len(columns) < 2:
        raise ValueError(f"{path}: an outcome table needs an image column and at least one outcome column; "
                         f"found columns {columns}")
    if not rows:
        raise ValueError(f"{path} has a header but no rows")
    return OutcomeTable(columns, rows, choose_id_column(columns, id_column, str(path)), str(path))


def choose_id_column(columns: Sequence[str], id_column: str | None, source: str = "outcome table") -> str:
    if id_column is not None:
        if id_column not in columns:
            raise ValueError(f"{source} has no column {id_column!r}; columns: {', '.join(columns)}")
        return id_column
    lower = {c.lower(): c for c in columns}
    for name in ID_COLUMNS:
        if name in lower:
            return lower[name]
    return columns[0]


def _strip_ext(name: str) -> str:
    from .io import stem_of

    return stem_of(Path(name))


def match_outcome(table: OutcomeTable, outcome: str, image_names: Sequence[str]) -> list[str | None]:
    """The outcome value (a string, or None when missing) of each image, matched by name.

    A row matches an image when its id equals the image name, with or without the file
    extension; if no name matches and every id is an integer in 0..S-1, ids are image indices.
    """
    if outcome not in table.columns:
        raise ValueError(f"{table.source} has no column {outcome!r}; outcome columns: {', '.join(table.outcomes())}")
    if outcome == table.id_column:
        raise ValueError(f"{outcome!r} is the image column; choose an outcome column: {', '.join(table.outcomes())}")
    ids = [r.get(table.id_column, "") for r in table.rows]
    by_name: dict[str, str] = {}
    for i, r in zip(ids, table.rows):
        for key in {i, _strip_ext(i)}:
            if key in by_name and by_name[key] != r[outcome]:
                raise ValueError(f"{table.source}: image {key!r} appears twice with different {outcome!r}")
            by_name[key] = r[outcome]
    values = [by_name.get(n, by_name.get(_strip_ext(n))) for n in image_names]
    if all(v is None for v in values):
        if ids and all(_is_int(i) and 0 <= int(i) < len(image_names) for i in ids):
            values = [None] * len(image_names)
            for i, r in zip(ids, table.rows):
                values[int(i)] = r[outcome]
        else:
            raise ValueError(
                f"no row of {table.source} matches an image: column {table.id_column!r} has "
                f"{', '.join(repr(i) for i in ids[:3])}{' ...' if len(ids) > 3 else ''}, the images are "
                f"{', '.join(repr(n) for n in list(image_names)[:3])}{' ...' if len(image_names) > 3 else ''} "
                "(names with or without extension, or 0-based indices)")
    return [None if v is None or v.strip().lower() in MISSING else v.strip() for v in values]


def _is_int(s: str) -> bool:
    try:
        return float(s) == int(float(s)) and "." not in s
    except ValueError:
        return False


def _is_number(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


# --------------------------------------------------------------------- association
@dataclass
class Ranking:
    """Ranked associations: ``rows`` best first, and what was tested."""

    rows: list[dict]
    outcome: str
    kind: str  # "numeric" or "groups"
    measure: str
    values: list  # outcome per image (float or group name; None when missing)
    n_images: int
    dropped: int  # images without an outcome value
    groups: list[str] = field(default_factory=list)

    def to_csv(self, path: str | Path, overwrite: bool = False) -> Path:
        from .export import check_writable

        path = Path(path)
        check_writable([path], overwrite)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_csv(path, public_rows(self), RANK_FIELDS)
        return path


RANK_FIELDS = ["rank", "protocol", "label", "name", "measure", "test", "statistic", "effect", "p", "q", "n",
               "present_in"]


def write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> None:
    fields = fields or (list(rows[0]) if rows else RANK_FIELDS)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def rank_labels(measurements: Measurements, values: Sequence, *, outcome: str = "outcome", measure: str = "area",
                kind: str | None = None, min_present: int = MIN_IMAGES) -> Ranking:
    """Test every (protocol, label) for association of ``measure`` with the outcome ``values``.

    Arguments:
        values: one outcome per image (str/float, None when missing): images without a value
            are left out and counted in ``dropped``.
        kind: "numeric" (Spearman), "groups" (Mann-Whitney for 2, Kruskal-Wallis for more), or
            None: numeric when every value parses as a number and there are more than 2
            distinct values, otherwise groups.
        min_present: labels present in fewer images than this are not tested.

    Rows are ordered by q, then p, then |effect| (larger first), then median size (smaller
    first: in a two-label protocol a structure and its complement tie on every statistic).

    Returns:
        a :class:`Ranking`; ``effect`` is Spearman's rho, the rank-biserial correlation
        (Mann-Whitney, sign: second group larger) or epsilon-squared (Kruskal-Wallis).
    """
    from scipy import stats

    data = measurements.values(measure)
    m, k, s = data.shape
    if len(values) != s:
        raise ValueError(f"{len(values)} outcome values for {s} images")
    present = [v is not None for v in values]
    idx = np.flatnonzero(present)
    if idx.size < MIN_IMAGES:
        raise ValueError(f"outcome {outcome!r} has a value for {idx.size} image(s); at least {MIN_IMAGES} are needed")
    observed = [str(values[i]) for i in idx]
    numeric_ok = all(_is_number(v) for v in observed)
    if kind is None:
        kind = "numeric" if numeric_ok and len(set(observed)) > 2 else "groups"
    if kind == "numeric":
        if not numeric_ok:
            bad = next(v for v in observed if not _is_number(v))
            raise ValueError(f"outcome {outcome!r} has the non-numeric value {bad!r}; use kind='groups' for categories")
        y = np.array([float(v) for v in observed])
        if np.ptp(y) == 0:
            raise ValueError(f"outcome {outcome!r} has the same value for every image; nothing to associate")
        groups: list[str] = []
    elif kind == "groups":
        groups = sorted(set(observed), key=lambda g: (not _is_number(g), float(g) if _is_number(g) else 0, g))
        if len(groups) < 2:
            raise ValueError(f"outcome {outcome!r} has a single group ({groups[0]!r}) among the images with a value; "
                             "a group comparison needs at least two")
        sizes = {g: observed.count(g) for g in groups}
        small = [g for g, n in sizes.items() if n < 2]
        if small:
            raise ValueError(f"outcome {outcome!r}: group(s) {', '.join(map(repr, small))} have a single image; "
                             "each group needs at least two")
        y = np.array([groups.index(v) for v in observed])
    else:
        raise ValueError(f"kind must be 'numeric' or 'groups', got {kind!r}")

    rows = []
    for p in range(m):
        for lab in range(k):
            x = data[p, lab, idx]
            if measure == "intensity":
                ok = np.isfinite(x)
            else:
                ok = np.ones_like(x, bool)
            n_present = int((measurements.pixels[p, lab, idx] > 0).sum())
            if n_present < min_present or ok.sum() < MIN_IMAGES or np.ptp(x[ok]) == 0:
                continue
            xs, ys = x[ok], y[ok]
            if kind == "numeric":
                rho, pval = spearman(xs, ys)
                test, stat, effect = "spearman", rho, rho
            else:
                samples = [xs[ys == g] for g in range(len(groups))]
                if any(len(a) == 0 for a in samples):
                    continue
                if len(groups) == 2:
                    res = stats.mannwhitneyu(samples[1], samples[0], alternative="two-sided")
                    n1, n0 = len(samples[1]), len(samples[0])
                    test, stat, pval = "mann-whitney", float(res.statistic), float(res.pvalue)
                    effect = 2 * stat / (n1 * n0) - 1
                else:
                    res = stats.kruskal(*samples)
                    test, stat, pval = "kruskal-wallis", float(res.statistic), float(res.pvalue)
                    effect = stat / (len(xs) - 1) if len(xs) > 1 else float("nan")
            if not np.isfinite(pval):
                continue
            rows.append({"protocol": measurements.protocols[p], "label": lab + 1,
                         "name": measurements.names.get(lab + 1, f"label {lab + 1}"), "measure": measure,
                         "test": test, "statistic": stat, "effect": effect, "p": pval, "n": int(ok.sum()),
                         "present_in": n_present, "_m": p, "_k": lab,
                         "_size": float(np.median(measurements.pixels[p, lab, idx]))})
    if rows:
        q = stats.false_discovery_control([r["p"] for r in rows], method="bh")
        for r, qv in zip(rows, q):
            r["q"] = float(qv)
    # ties (a two-label protocol: a structure and its complement have the same p) go to the smaller label
    rows.sort(key=lambda r: (r["q"], r["p"], -abs(r["effect"]) if np.isfinite(r["effect"]) else 0.0, r["_size"]))
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    ordered = [{f: r[f] for f in RANK_FIELDS} | {"_m": r["_m"], "_k": r["_k"]} for r in rows]
    vals = [None if v is None else (float(v) if kind == "numeric" else str(v)) for v in values]
    return Ranking(ordered, outcome, kind, measure, vals, s, s - int(idx.size), groups)


EXACT_N = 8  # up to this many images, Spearman's p-value is exact (all n! orderings)
PERMUTATION_N = 30  # below this, a permutation p-value (the t approximation is poor for small n)
PERMUTATIONS = 20000


def spearman(x, y) -> tuple[float, float]:
    """Spearman's rho and its two-sided p-value.

    For n <= ``EXACT_N`` the p-value is exact: the share of all n! orderings of ``y`` whose
    |rho| is at least the observed one (the t approximation ``scipy.stats.spearmanr`` uses
    gives p ~ 1e-24 for a perfect rank agreement of 5 images, where the exact value is 1/60).
    Larger n: ``scipy.stats.spearmanr``.
    """
    from itertools import permutations

    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    res = stats.spearmanr(x, y)
    rho = float(res.statistic)
    n = len(x)
    if n >= PERMUTATION_N or not np.isfinite(rho):
        return rho, float(res.pvalue)
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    if n <= EXACT_N:
        orders = np.array(list(permutations(range(n))))
    else:
        orders = np.random.default_rng(0).random((PERMUTATIONS, n)).argsort(1)
    rhos = (ry[orders] @ rx) / np.sqrt((rx @ rx) * (ry @ ry))
    hits = int(np.sum(np.abs(rhos) >= abs(rho) - 1e-12))
    return rho, (hits / len(orders) if n <= EXACT_N else (hits + 1) / (len(orders) + 1))


def public_rows(ranking: Ranking) -> list[dict]:
    """The ranking rows without the internal array indices (for CSV and tables)."""
    return [{f: r[f] for f in RANK_FIELDS} for r in ranking.rows]


# --------------------------------------------------------------------- plot
def plot_association(measurements: Measurements, ranking: Ranking, row: int = 0, figure=None):
    """Scatter (numeric outcome) or box plot (groups) of one ranked label's measure per image.

    Uses matplotlib's object API without pyplot (no GUI backend); returns the Figure.
    """
    from matplotlib.figure import Figure

    if not ranking.rows:
        raise ValueError("nothing to plot: no label was tested")
    r = ranking.rows[row]
    x = measurements.values(ranking.measure)[r["_m"], r["_k"]]
    fig = figure if figure is not None else Figure(figsize=(4.5, 3.4), dpi=100)
    fig.clear()
    ax = fig.add_subplot(111)
    unit = "area (scale units²)" if ranking.measure == "area" else "mean intensity"
    keep = [i for i, v in enumerate(ranking.values) if v is not None]
    if ranking.kind == "numeric":
        ax.scatter([ranking.values[i] for i in keep], x[keep], s=18, color="#1f77b4")
        ax.set_xlabel(ranking.outcome)
        ax.set_ylabel(unit)
    else:
        data = [[x[i] for i in keep if ranking.values[i] == g] for g in ranking.groups]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(ranking.groups) + 1), ranking.groups)
        rng = np.random.default_rng(0)
        for gi, d in enumerate(data):
            ax.scatter(gi + 1 + rng.uniform(-0.12, 0.12, len(d)), d, s=12, color="#1f77b4", alpha=0.7)
        ax.set_xlabel(ranking.outcome)
        ax.set_ylabel(unit)
    ax.set_title(f"protocol {r['protocol']}, {r['name']}: {r['test']} {r['effect']:+.2f}, q = {r['q']:.2g}", fontsize=9)
    fig.tight_layout()
    return fig


def save_plot(fig, path: str | Path, overwrite: bool = False) -> Path:
    from .export import check_writable

    path = Path(path)
    check_writable([path], overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------- one call
def analyze(images, table: OutcomeTable | str | Path, outcome: str, *, m: int = 8, k: int = 20, seed: int = 0,
            model=None, protocol=None, scale=None, image_names: Sequence[str] | None = None, measure: str = "area",
            kind: str | None = None, id_column: str | None = None, progress=None) -> tuple[Measurements, Ranking]:
    """Segment and measure ``images``, match the outcome table, rank every (protocol, label).

    Checks the table against the image names before running the model, so a table that matches
    no image fails at once.
    """
    from .preprocess import to_image_list

    if not isinstance(table, OutcomeTable):
        table = read_outcomes(table, id_column)
    items, _ = to_image_list(images)
    names = list(image_names) if image_names is not None else [str(i) for i in range(len(items))]
    values = match_outcome(table, outcome, names)
    if sum(v is not None for v in values) < MIN_IMAGES:
        raise ValueError(f"only {sum(v is not None for v in values)} image(s) have a value of {outcome!r}; "
                         f"at least {MIN_IMAGES} are needed")
    measurements = measure_set(items, m, k, seed=seed, model=model, protocol=protocol, scale=scale,
                               image_names=names, progress=progress)
    return measurements, rank_labels(measurements, values, outcome=outcome, measure=measure, kind=kind)
