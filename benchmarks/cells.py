"""The cells of REPORT.md's tables: numbers, intervals and reach counts as text."""

from benchmarks import metrics


def num(value, fmt="{:.4g}") -> str:
  return "–" if value is None or not metrics.finite(value) else fmt.format(value)


def ci(interval: dict, fmt: str) -> str:
  if interval["n"] == 0:
    return "–"
  if interval["half_width"] is None:
    return f"{fmt.format(interval['mean'])} (n=1)"
  return f"{fmt.format(interval['mean'])} ± {fmt.format(interval['half_width'])}"


def reach(entry: dict, fmt: str) -> str:
  vals = [("n.r." if v is None else fmt.format(v)) for v in entry["values"].values()]
  med = "–" if entry["median"] is None else fmt.format(entry["median"])
  return f"{entry['reached']}/{entry['n']}; median {med} [{', '.join(vals)}]"


def table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def interval(low, high, fmt="{:.0f}") -> str:
  return "–" if low is None or high is None else f"[{fmt.format(low)}, {fmt.format(high)}]"
