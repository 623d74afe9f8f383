"""PNG plots from benchmarks/results/*.json (needs the `bench` extra: matplotlib)."""

from __future__ import annotations

import json

from benchmarks.common import RESULTS


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scaling = json.loads((RESULTS / "scaling.json").read_text())
    rows = scaling["rows"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot([r["offered_fps"] for r in rows], [r.get("p99_ms", 0) for r in rows], "o-", label="p99")
    a.plot([r["offered_fps"] for r in rows], [r.get("p50_ms", 0) for r in rows], "s-", label="p50")
    a.set_xlabel("offered load (frames/s)")
    a.set_ylabel("latency (ms)")
    a.set_yscale("log")
    a.legend()
    a.set_title("latency vs load (640x480 camera frames)")
    fixed = [r for r in rows if r["rate_per_source"] == rows[0]["rate_per_source"]]
    b.plot([r["sources"] for r in fixed], [r["throughput_fps"] for r in fixed], "o-", label="served")
    b.plot([r["sources"] for r in fixed], [r["offered_fps"] for r in fixed], "--", label="offered")
    b.set_xlabel("sources")
    b.set_ylabel("frames/s")
    b.legend()
    b.set_title(f"throughput vs sources ({fixed[0]['rate_per_source']:g} fps each)")
    fig.suptitle(f"inferd on {scaling['machine']['cpu']} ({scaling['machine']['cores']} cores)")
    fig.tight_layout()
    out = RESULTS / "scaling.png"
    fig.savefig(out, dpi=100)
    print("saved", out)


if __name__ == "__main__":
    main()
