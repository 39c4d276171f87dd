"""Tables and figures of a sweep: python -m cnnjax.tools.report SWEEP_DIR_OR_SWEEP_PY [--out DIR]

Reads each point's config.json, metrics.jsonl (the last row per split and step: a resumed run
repeats the steps it retrained), sweep_status.json and train.log, and writes into the sweep
dir (or --out):
  report.md / report.csv  one row per group: the final and the best eval value of the task's
      best metric and of its other scalar eval metrics (best = by the task's direction; metrics
      without one get the final value only), the final train loss, the wall time (seconds over
      all attempts, from sweep_status.json, else train.log's 'done: ... in', else steps/sec)
      and the parameter count (train.log's start-up line 'model  NAME  N parameters'), each
      as the mean ± sample std (ddof 1) over the group's finished seeds, with their count;
  train_loss.png, eval_<metric>.png  x = step, one line per group (mean over its finished
      seeds, a band of ± 1 std), as in Fig. 4 and 6 of the ResNet paper; an eval figure also
      draws the train value of the same metric, where the train rows log it, thin and dashed;
  final_<metric>.png  the final value of the best metric per group: bars of the mean, std
      error bars and each seed as a dot;
  profile_<metric>.png  for a list-valued eval metric (per-class IoU, the gradient norm per
      time step `input_grad_norm`): x = its index, one line per group, the final eval's
      values (mean over seeds), log-scaled when they are positive and span over 2 decades.
With --readme (the target a sweep.py), the table and figure links also replace the block
between `<!-- report:start -->` and `<!-- report:end -->` of the experiment's README.md, and
the PNGs are copied next to it: the README's table is this output, never typed.
Only finished points enter a mean; the others (running, failed, interrupted, pending) are
counted in the 'runs' column and listed under the table (rows of split 'eval_ema' are not
reported). It prints the table and that list: what an experiment's README pastes. Given a
sweep.py, the sweep dir is its default one (runs/sweeps/<experiment folder>).
"""

import argparse
import collections
import csv
import dataclasses
import json
import math
import re
import sys
from pathlib import Path

import ml_collections
import numpy as np

from cnnjax import tasks
from cnnjax.errors import EXIT_BAD_INPUT, ConfigError
from cnnjax.logs.writers import read_metrics
from cnnjax.tools import sweep

SKIP_KEYS = {"step", "split", "num_examples"}
PARAMS_RE = re.compile(r"^\s*model\s+\S+\s+([\d,]+) parameters", re.M)
DONE_RE = re.compile(r"^done: [\d,]+ steps in (?:(\d+)h)?(\d+)m(\d+)s", re.M)


@dataclasses.dataclass
class PointRun:
    """One point as found on disk; `rows[split]` = {step: row} (the last row per step)."""

    name: str
    group: str
    seed: int
    state: str
    workdir: Path
    config: dict
    rows: dict


def dedup(rows: list[dict]) -> dict:
    """Metric rows -> {split: {step: row}} keeping the last row per (split, step), by step."""
    out = collections.defaultdict(dict)
    for r in rows:
        out[r.get("split")][r.get("step")] = r
    return {split: dict(sorted(by_step.items())) for split, by_step in out.items()}


def _entries(sweep_dir: Path, sweep_file) -> list[dict]:
    """name / group / seed of every point: the sweep file's, else sweep.json's, else the
    subfolders holding a config.json."""
    if sweep_file is not None:
        return [dataclasses.asdict(p) for p in sweep.load_sweep(sweep_file)]
    manifest = sweep_dir / sweep.MANIFEST
    if manifest.exists():
        return json.loads(manifest.read_text())["points"]
    out = []
    for d in sorted(p for p in sweep_dir.iterdir() if (p / "config.json").exists()):
        seed = json.loads((d / "config.json").read_text())["train"]["seed"]
        out.append({"name": d.name, "seed": seed, "group": sweep.default_group(d.name, seed)})
    return out


def collect(sweep_dir, sweep_file=None) -> list[PointRun]:
    """Every point of the sweep in `sweep_dir`, with its state, config and metric rows."""
    sweep_dir, runs = Path(sweep_dir), []
    for e in _entries(sweep_dir, sweep_file):
        wd = sweep_dir / e["name"]
        path = wd / "config.json"
        config = json.loads(path.read_text()) if path.exists() else {}
        step = sweep.final_step(ml_collections.ConfigDict(config), wd) if config else None
        state = sweep.point_state(wd, step)
        rows = dedup(read_metrics(wd))
        runs.append(PointRun(e["name"], e["group"], e["seed"], state, wd, config, rows))
    return runs


def metric_info(config: dict) -> tuple[str, dict]:
    """-> (the run's best metric, {metric: 'max' | 'min'} of its task)."""
    task = tasks.get(config["task"]["name"])
    return config["eval"].get("best_metric") or task.best_metric, dict(task.METRICS)


def _scalar(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _wanted(key: str, best: str | None, only: tuple) -> bool:
    return not only or key == best or key in only


def summarize(run: PointRun, only: tuple = ()) -> dict:
    """One finished run -> {'<metric>_final', '<metric>_best', 'train_loss_final',
    'wall_time_s', 'params'} (keys it has no value for are left out; `only`: just these
    eval metrics and the best one)."""
    best, directions = metric_info(run.config)
    evals = list(run.rows.get("eval", {}).values())
    names = [
        k for r in evals for k in r
        if k not in SKIP_KEYS and _scalar(r[k]) and _wanted(k, best, only)
    ]  # fmt: skip
    out = {}
    for m in sorted(set(names), key=lambda k: (k != best, names.index(k))):
        values = [r[m] for r in evals if _scalar(r.get(m))]
        out[f"{m}_final"] = values[-1]
        if m in directions:
            out[f"{m}_best"] = (max if directions[m] == "max" else min)(values)
    losses = [r["loss"] for r in run.rows.get("train", {}).values() if _scalar(r.get("loss"))]
    if losses:
        out["train_loss_final"] = losses[-1]
    for key, value in (("wall_time_s", wall_time(run)), ("params", parameters(run.workdir))):
        if value is not None:
            out[key] = value
    return out


def wall_time(run: PointRun) -> float | None:
    """Seconds the run took: sweep_status.json's total, else train.log, else steps/sec."""
    status = sweep.read_status(run.workdir)
    if "elapsed_s" in status:
        return float(status["elapsed_s"])
    found = DONE_RE.findall(_log(run.workdir))
    if found:
        h, m, s = (int(x or 0) for x in found[-1])
        return 3600.0 * h + 60 * m + s
    train, last, total = run.rows.get("train", {}), 0, 0.0
    for step, r in train.items():
        if _scalar(r.get("steps_per_sec")) and r["steps_per_sec"] > 0:
            total, last = total + (step - last) / r["steps_per_sec"], step
    return total or None


def parameters(workdir) -> int | None:
    """The parameter count in train.log's start-up summary (its last one)."""
    found = PARAMS_RE.findall(_log(workdir))
    return int(found[-1].replace(",", "")) if found else None


def _log(workdir) -> str:
    path = Path(workdir) / sweep.LOG_FILE
    return path.read_text(errors="replace") if path.exists() else ""


@dataclasses.dataclass
class Group:
    """A variant: its runs, its best metric and {key: per-seed values of finished runs}."""

    name: str
    runs: list
    metric: str = ""
    values: dict = dataclasses.field(default_factory=dict)

    @property
    def done(self) -> list:
        return [r for r in self.runs if r.state == "done"]

    def stat(self, key: str) -> tuple[float, float, int] | None:
        """-> (mean, sample std (0 for one seed), n) of `key` over the finished seeds."""
        v = np.asarray(self.values.get(key, []), np.float64)
        if not v.size:
            return None
        return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def aggregate(runs: list[PointRun], only: tuple = ()) -> list[Group]:
    """Runs -> one Group per group name, in the order of the points (`only`: see
    `summarize`)."""
    groups = {}
    for r in runs:
        groups.setdefault(r.group, Group(r.group, [])).runs.append(r)
    for g in groups.values():
        for r in g.done:
            g.metric = g.metric or metric_info(r.config)[0]
            for k, v in summarize(r, only).items():
                g.values.setdefault(k, []).append(v)
    return list(groups.values())


def columns(groups: list[Group]) -> list[str]:
    """Value keys in table order: best metrics first, then the other metrics, then the rest."""
    keys = list(dict.fromkeys(k for g in groups for k in g.values))
    metrics = {g.metric for g in groups}
    tail = ("train_loss_final", "wall_time_s", "params")

    def rank(k):
        return (k in tail, tail.index(k) if k in tail else 0, k.rsplit("_", 1)[0] not in metrics)

    return sorted(keys, key=rank)


def _runs_cell(g: Group) -> str:
    left = collections.Counter(r.state for r in g.runs if r.state != "done")
    note = ", ".join(f"{n} {s}" for s, n in sorted(left.items()))
    return f"{len(g.done)}/{len(g.runs)}" + (f" ({note})" if note else "")


def _num(v: float, like: float | None = None) -> str:
    """`v` with the decimals that suit the size of `like` (default `v`)."""
    size = abs(v if like is None else like)
    if not math.isfinite(v):
        return str(v)
    return f"{v:,.0f}" if size >= 1000 else f"{v:.2f}" if size >= 10 else f"{v:.4f}"


def _cell(g: Group, key: str) -> str:
    stat = g.stat(key)
    if stat is None:
        return "—"
    mean, std, n = stat
    if key == "params":  # the same for every seed of a variant
        low, high = min(g.values[key]), max(g.values[key])
        return f"{low:,}" if low == high else f"{low:,}–{high:,}"
    return _num(mean) if n == 1 else f"{_num(mean)} ± {_num(std, mean)}"


def _header(key: str, directions: dict) -> str:
    name, _, kind = key.rpartition("_")
    if key == "wall_time_s":
        return "wall time (s)"
    if key == "params" or not name:
        return key
    arrow = {"max": " ↑", "min": " ↓"}.get(directions.get(name), "")
    return f"{name.replace('_', ' ')} {kind}{arrow}"


def markdown(groups: list[Group], directions: dict) -> str:
    """The table (mean ± std over finished seeds) and the list of points left out."""
    keys = columns(groups)
    head = ["group", "runs", *(_header(k, directions) for k in keys)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        cells = [g.name, _runs_cell(g), *(_cell(g, k) for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    out = [r for g in groups for r in g.runs if r.state != "done"]
    if out:
        lines += ["", "Not in the means (not finished):"]
        lines += [f"- `{r.name}` ({r.group}, seed {r.seed}): {_why(r)}" for r in out]
    return "\n".join(lines) + "\n"


def _why(run: PointRun) -> str:
    code = sweep.read_status(run.workdir).get("exit_code")
    return run.state + (f", exit {code}" if code not in (None, 0) else "")


def write_csv(groups: list[Group], path: Path) -> None:
    keys = columns(groups)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["group", "best_metric", "runs_done", "runs_total", "not_done"]
            + [f"{k}_{s}" for k in keys for s in ("mean", "std", "n")]
        )
        for g in groups:
            left = ";".join(f"{r.name}:{r.state}" for r in g.runs if r.state != "done")
            stats = [g.stat(k) or ("", "", 0) for k in keys]
            w.writerow(
                [g.name, g.metric, len(g.done), len(g.runs), left] + [x for s in stats for x in s]
            )


# --- figures ---------------------------------------------------------------------------


def curve(runs: list[PointRun], split: str, key: str):
    """-> (steps, mean, std) over `runs` at the steps all of them logged `key`, or None."""
    series = [
        {s: r[key] for s, r in run.rows.get(split, {}).items() if _scalar(r.get(key))}
        for run in runs
    ]
    steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
    if not steps:
        return None
    values = np.asarray([[s[t] for t in steps] for s in series], np.float64)
    std = values.std(0, ddof=1) if len(values) > 1 else np.zeros(len(steps))
    return np.asarray(steps), values.mean(0), std


def plot_curves(groups: list[Group], split: str, key: str, path: Path, thin_split="") -> bool:
    """x = step, per group the mean over seeds (bold, with a ± std band) of `split`'s `key`
    and, if given and logged, `thin_split`'s (thin, dashed); False if nothing to draw."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for i, g in enumerate(groups):
        for sp in (split, thin_split) if thin_split else (split,):
            drawn |= _draw(ax, g, sp, key, f"C{i % 10}", bold=sp == split)
    if drawn:
        title = f"{split} {key}" + (f" (dashed: {thin_split})" if thin_split else "")
        ax.set(xlabel="step", ylabel=key, title=f"{title}; mean ± std over seeds")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return drawn


def _draw(ax, g: Group, split: str, key: str, color: str, bold: bool) -> bool:
    c = curve(g.done, split, key)
    if c is None:
        return False
    steps, mean, std = c
    marker = "o" if len(steps) <= 20 else None  # a single eval is a point, not a line
    label = g.name if bold else f"{g.name} ({split})"
    style = dict(color=color, lw=2 if bold else 1, ms=4 if bold else 2, label=label)
    ax.plot(steps, mean, "-" if bold else "--", marker=marker, **style)
    if bold:
        ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
    return True


def plot_final(groups: list[Group], metric: str, path: Path) -> bool:
    """Bars: the mean final `metric` per group, std error bars, each seed a dot."""
    import matplotlib.pyplot as plt

    shown = [g for g in groups if g.values.get(f"{metric}_final")]
    if not shown:
        return False
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(shown)), 4))
    for i, g in enumerate(shown):
        mean, std, _ = g.stat(f"{metric}_final")
        ax.bar(i, mean, yerr=std, capsize=6, color=f"C{i % 10}", alpha=0.7)
        seeds = g.values[f"{metric}_final"]
        ax.plot([i] * len(seeds), seeds, "k.", ms=8)
    ax.set_xticks(range(len(shown)), [g.name for g in shown])
    ax.set(ylabel=f"final eval {metric}", title=f"final {metric} per group (mean ± std, seeds)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def final_list(run: PointRun, key: str) -> list | None:
    """The final eval row's list-valued `key` (e.g. per_class_iou), or None."""
    evals = list(run.rows.get("eval", {}).values())
    v = evals[-1].get(key) if evals else None
    return v if isinstance(v, list) and v and all(_scalar(x) for x in v) else None


def plot_profile(groups: list[Group], key: str, path: Path) -> bool:
    """x = index of a list metric, per group the mean (over finished seeds) of its final
    values; log y when every value is positive and they span over 2 decades."""
    import matplotlib.pyplot as plt

    lines = {}
    for g in groups:
        values = [v for r in g.done if (v := final_list(r, key)) is not None]
        if values and len({len(v) for v in values}) == 1:
            lines[g.name] = np.nanmean(np.asarray(values, np.float64), 0)
    if not lines:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, y) in enumerate(lines.items()):
        ax.plot(np.arange(len(y)), y, "-o" if len(y) <= 20 else "-", ms=3, color=f"C{i % 10}",
                label=name)  # fmt: skip
    every = np.concatenate(list(lines.values()))
    every = every[np.isfinite(every)]
    if every.size and every.min() > 0 and every.max() / every.min() > 100:
        ax.set_yscale("log")
    ax.set(xlabel="index (time step, class, ...)", ylabel=key,
           title=f"final eval {key} per index; mean over seeds")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def figures(groups: list[Group], out: Path, only: tuple = ()) -> list[str]:
    """Writes the PNGs -> their file names (`only`: eval metrics to draw, besides the best
    one; list-valued ones included)."""
    import matplotlib

    matplotlib.use("Agg")
    done = [r for g in groups for r in g.done]
    evals = dict.fromkeys(
        k
        for r in done
        for row in r.rows.get("eval", {}).values()
        for k in row
        if k not in SKIP_KEYS and _scalar(row[k]) and _wanted(k, metric_info(r.config)[0], only)
    )
    names = []
    if plot_curves(groups, "train", "loss", out / "train_loss.png"):
        names.append("train_loss.png")
    for m in evals:
        if plot_curves(groups, "eval", m, out / f"eval_{m}.png", thin_split="train"):
            names.append(f"eval_{m}.png")
    for m in dict.fromkeys(g.metric for g in groups if g.metric):
        if plot_final(groups, m, out / f"final_{m}.png"):
            names.append(f"final_{m}.png")
    lists = dict.fromkeys(k for r in done for row in list(r.rows.get("eval", {}).values())[-1:]
                          for k, v in row.items()
                          if isinstance(v, list) and _wanted(k, None, only))  # fmt: skip
    for m in lists:
        if plot_profile(groups, m, out / f"profile_{m}.png"):
            names.append(f"profile_{m}.png")
    return names


# --- command line ----------------------------------------------------------------------


README_START, README_END = "<!-- report:start -->", "<!-- report:end -->"


def paste_into_readme(readme: Path, table: str, images: list[str], source: Path) -> None:
    """Replaces the report block of `readme` with `table` and links to `images`, copied from
    `source` next to the README."""
    import shutil

    if not readme.exists():
        raise ConfigError(f"--readme: '{readme}' does not exist")
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ConfigError(f"--readme: '{readme}' has no {README_START} ... {README_END} block")
    for name in images:
        shutil.copyfile(source / name, readme.parent / name)
    links = "".join(f"\n![{n[:-4]}]({n})\n" for n in images)
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{table}{links}{README_END}{tail}")


def report(target, out=None, readme: bool = False, metrics=()) -> str:
    """Writes report.md, report.csv and the PNGs of the sweep `target` (a sweep dir or a
    sweep.py) into `out` (default: the sweep dir) -> the markdown table with its notes.
    `readme`: also paste them into the experiment's README.md (see the module docstring).
    `metrics`: report only these eval metrics besides the best one (e.g. a detector's 16)."""
    only = tuple(metrics)
    target = Path(target)
    sweep_file = target if target.suffix == ".py" else None
    if readme and sweep_file is None:
        raise ConfigError("--readme needs the sweep.py (its folder holds the README.md)")
    sweep_dir = sweep.default_sweep_dir(target) if sweep_file else target
    if not sweep_dir.is_dir():
        raise sweep.SweepError(f"sweep dir '{sweep_dir}' does not exist (run the sweep first)")
    runs = collect(sweep_dir, sweep_file)
    if not runs:
        raise sweep.SweepError(f"'{sweep_dir}' holds no sweep.json and no runs")
    groups = aggregate(runs, only)
    directions = {}
    for r in runs:
        directions.update(metric_info(r.config)[1] if r.config else {})
    table = markdown(groups, directions)
    out = Path(out) if out else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    write_csv(groups, out / "report.csv")
    names = figures(groups, out, only)
    images = "".join(f"\n![{n[:-4]}]({n})\n" for n in names)
    note = "Values: mean ± sample std (ddof 1) over the finished seeds of each group.\n"
    (out / "report.md").write_text(f"# Sweep {sweep_dir.name}\n\n{note}\n{table}{images}")
    if readme:
        paste_into_readme(sweep_file.parent / "README.md", table, names, out)
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        "python -m cnnjax.tools.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", help="a sweep dir, or experiments/NAME/sweep.py")
    p.add_argument("--out", default="", help="where to write (default: the sweep dir)")
    p.add_argument(
        "--readme",
        action="store_true",
        help="also paste the table and figures into the experiment's README.md",
    )
    p.add_argument(
        "--metrics",
        default="",
        help="comma-separated eval metrics to report besides the best one (default: all)",
    )
    args = p.parse_args(argv)
    only = tuple(m for m in args.metrics.split(",") if m)
    try:
        print(report(args.target, args.out or None, readme=args.readme, metrics=only), end="")
    except ConfigError as e:  # a bad sweep file or dir, an unknown task in a config.json
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    from cnnjax.tools import report as _report

    sys.exit(_report.main())
