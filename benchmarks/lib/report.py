"""Writes summary.md and the PNG plots from a results dict (see bench.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _f(v, digits=0, unit=""):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        s = f"{v:,.{digits}f}"
    else:
        s = f"{v:,}"
    return s + unit


def _x(v, digits=2):
    return _f(v, digits, "×")


def _size(n) -> str:
    if n is None:
        return "–"
    if n < 1024:
        return f"{n:.0f} B"
    if n < 1024 * 1024:
        return f"{n / 1024:,.0f} KiB"
    return f"{n / 2**20:,.1f} MiB"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------


def _plots(results: dict, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return []
    made = []
    sc = results["scenarios"]
    plt.rcParams.update({"figure.dpi": 110, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    colors = {"direct": "#7f7f7f", "taskmesh": "#1f77b4", "haproxy": "#ff7f0e", "nginx": "#2ca02c",
              "mlserver": "#d62728", "mlserver-inproc": "#9467bd", "floor": "#8c564b"}  # fmt: skip

    ro = sc.get("router-overhead")
    if ro:
        t = ro["targets"]
        names = list(t)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
        xs = range(len(names))
        w = 0.38
        p50 = [t[n]["latency_p50_us"] for n in names]
        p99 = [t[n]["latency_p99_us"] for n in names]
        a1.bar([x - w / 2 for x in xs], p50, w, label="p50", color=[colors.get(n, "#333") for n in names])
        a1.bar([x + w / 2 for x in xs], p99, w, label="p99", color=[colors.get(n, "#333") for n in names],
               alpha=0.45, hatch="//")  # fmt: skip
        for x, v in zip(xs, p50):
            a1.text(x - w / 2, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
        for x, v in zip(xs, p99):
            a1.text(x + w / 2, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
        a1.set_xticks(list(xs), names)
        a1.set_ylabel("latency, µs")
        a1.set_title("1 connection, 1 stream: latency (solid p50, hatched p99)")
        rps = [t[n]["throughput_rps"] for n in names]
        a2.bar(list(xs), rps, color=[colors.get(n, "#333") for n in names])
        for x, n, v in zip(xs, names, rps):
            cpu = (ro["ratios"].get(n) or {}).get("proxy_cpu_us_per_req")
            lbl = f"{v:,.0f}" + (f"\nproxy {cpu:.0f} µs CPU/req" if cpu is not None else "")
            a2.text(x, v, lbl, ha="center", va="bottom", fontsize=7)
        a2.set_xticks(list(xs), names)
        a2.set_ylabel("requests/s")
        cfg = t[names[0]]["reps"]["throughput"][0]["config"]
        a2.set_title(f"{cfg['conns']} connections × {cfg['streams']} streams: throughput")
        a2.margins(y=0.2)
        fig.suptitle("Router overhead: digits via the same runtime node")
        fig.tight_layout()
        fig.savefig(out / "router_overhead.png")
        plt.close(fig)
        made.append("router_overhead.png")

    vm = sc.get("vs-mlserver")
    if vm:
        servers = list(vm["servers"])
        kinds = []
        for srv in servers:
            kinds += [k for k in vm["servers"][srv]["loads"] if k not in kinds]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
        w = 0.8 / len(servers)
        for i, s in enumerate(servers):
            loads = vm["servers"][s]["loads"]
            xs = [k + (i - (len(servers) - 1) / 2) * w for k in range(len(kinds))]
            rps = [loads[k]["rps"] if k in loads else 0 for k in kinds]
            p50 = [loads[k]["p50_us"] / 1e3 if k in loads else 0 for k in kinds]
            a1.bar(xs, rps, w, label=s, color=colors.get(s))
            a2.bar(xs, p50, w, label=s, color=colors.get(s))
            for x, v in zip(xs, rps):
                if v:
                    a1.text(x, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=6, rotation=90)
            for x, v in zip(xs, p50):
                if v:
                    a2.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=6, rotation=90)
        for a in (a1, a2):
            a.set_xticks(range(len(kinds)), kinds)
            a.legend(fontsize=7)
        a1.set_ylabel("requests/s")
        a1.set_title("throughput (h1_cN: N HTTP/1.1 connections; h2c_mN: 1 connection, N streams)")
        a1.title.set_fontsize(8)
        a1.margins(y=0.25)
        a2.set_yscale("log")
        a2.margins(y=0.3)
        a2.set_ylabel("p50 latency, ms (log scale)")
        a2.set_title("p50 latency")
        fig.suptitle("OIP v2 infer, digits: Taskmesh vs MLServer (same body, same concurrency)")
        fig.tight_layout()
        fig.savefig(out / "vs_mlserver.png")
        plt.close(fig)
        made.append("vs_mlserver.png")

    fl = sc.get("floor")
    if fl and ro and "digits" in fl["models"]:
        bars = [("ONNX Runtime in-process\n(Python, 1 thread)", fl["models"]["digits"]["p50_us"], "floor")]
        bars.append(("runtime node direct\n(h2c, invoke)", ro["targets"]["direct"]["latency_p50_us"], "direct"))
        bars.append(("through the router\n(h2c, invoke)", ro["targets"]["taskmesh"]["latency_p50_us"], "taskmesh"))
        if vm and "mlserver" in vm["servers"] and "h1_c1" in vm["servers"]["mlserver"]["loads"]:
            bars.append(("MLServer\n(HTTP/1.1, OIP)", vm["servers"]["mlserver"]["loads"]["h1_c1"]["p50_us"], "mlserver"))
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ys = range(len(bars))
        ax.barh(list(ys), [b[1] for b in bars], color=[colors[b[2]] for b in bars])
        for y, b in zip(ys, bars):
            ax.text(b[1], y, f" {b[1]:.0f} µs", va="center", fontsize=8)
        ax.set_yticks(list(ys), [b[0] for b in bars])
        ax.invert_yaxis()
        ax.set_xlabel("p50 latency of one digits call, µs (1 stream)")
        ax.margins(x=0.2)
        ax.set_title("From the floor up: what each layer adds (digits)")
        fig.tight_layout()
        fig.savefig(out / "floor_vs_platform.png")
        plt.close(fig)
        made.append("floor_vs_platform.png")

    cs = sc.get("cold-start")
    if cs and cs["models"]:
        names = list(cs["models"])
        fig, ax = plt.subplots(figsize=(8, 3.6))
        xs = range(len(names))
        w = 0.27
        reg = [cs["models"][n]["register_ms"] for n in names]
        first = [cs["models"][n]["first_ms"] for n in names]
        warm = [cs["models"][n]["warm_p50_ms"] for n in names]
        ax.bar([x - w for x in xs], reg, w, label="register (`taskmesh fn register`: upload + define)", color="#bcbd22")
        ax.bar(list(xs), first, w, label="first call (cold start)", color="#d62728")
        ax.bar([x + w for x in xs], warm, w, label="warm call, median", color="#1f77b4")
        for x, f, v in zip(xs, first, warm):
            ax.text(x, f, f"{f:.1f}", ha="center", va="bottom", fontsize=7)
            ax.text(x + w, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_yscale("log")
        ax.set_xticks(list(xs), names)
        ax.set_ylabel("ms (log scale)")
        ax.legend(fontsize=7)
        ax.set_title("Cold start per example model, through the router")
        fig.tight_layout()
        fig.savefig(out / "cold_start.png")
        plt.close(fig)
        made.append("cold_start.png")

    mi = sc.get("micro")
    if mi and mi["benches"]:
        names = list(mi["benches"])
        vals = [mi["benches"][n]["median_ns"] for n in names]
        fig, ax = plt.subplots(figsize=(8, 0.32 * len(names) + 1.2))
        ys = range(len(names))
        ax.barh(list(ys), vals, color="#1f77b4")
        for y, v in zip(ys, vals):
            ax.text(v, y, f" {v / 1000:.2f} µs" if v >= 1000 else f" {v:.0f} ns", va="center", fontsize=7)
        ax.set_yticks(list(ys), names)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("median time per call, ns (log scale)")
        ax.margins(x=0.25)
        ax.set_title("Micro-benchmarks of the router's per-call decisions (criterion)")
        fig.tight_layout()
        fig.savefig(out / "micro.png")
        plt.close(fig)
        made.append("micro.png")

    ba = sc.get("batching")
    if ba and ba.get("models"):
        models = list(ba["models"])
        levels = [str(c) for c in ba["levels"]]
        fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 6.4), squeeze=False)
        vcolors = {"unbatched": "#7f7f7f", "batched": "#1f77b4"}
        w = 0.38
        for j, m in enumerate(models):
            lv = ba["models"][m]["levels"]
            xs = range(len(levels))
            a1, a2 = axes[0][j], axes[1][j]
            for i, variant in enumerate(("unbatched", "batched")):
                off = (i - 0.5) * w
                rps = [lv[c][variant]["rps"] for c in levels]
                a1.bar([x + off for x in xs], rps, w, label=variant, color=vcolors[variant])
                for x, v, c in zip(xs, rps, levels):
                    lbl = f"{v:,.0f}"
                    if variant == "batched":
                        mb = lv[c]["batched"].get("mean_batch_size")
                        lbl += f"\n×{lv[c]['ratio']['throughput']:.2f}" + (f"\nbatch {mb:.1f}" if mb == mb and mb else "")
                    a1.text(x + off, v, lbl, ha="center", va="bottom", fontsize=6.5)
                p50 = [lv[c][variant]["p50_us"] / 1e3 for c in levels]
                p99 = [lv[c][variant]["p99_us"] / 1e3 for c in levels]
                a2.bar([x + off for x in xs], p50, w, color=vcolors[variant], label=f"{variant} p50")
                a2.scatter([x + off for x in xs], p99, marker="_", s=300, color=vcolors[variant],
                           label=f"{variant} p99", zorder=3)  # fmt: skip
                for x, v in zip(xs, p50):
                    a2.text(x + off, v, f"{v:.2f}" if v < 10 else f"{v:.0f}", ha="center", va="bottom", fontsize=6.5)
            b = ba["models"][m]["batching"]
            a1.set_title(f"{m}: throughput (batching: max {b['max_batch_size']}, {b['max_delay_us']} µs)")
            a1.set_xticks(list(xs), [f"c={c}" for c in levels])
            a1.set_ylabel("requests/s")
            a1.margins(y=0.3)
            a1.legend(fontsize=7, loc="upper left")
            a2.set_yscale("log")
            a2.set_xticks(list(xs), [f"c={c}" for c in levels])
            a2.set_ylabel("latency, ms (log): bars p50, dashes p99")
            a2.set_title(f"{m}: latency")
            a2.margins(y=0.3)
            a2.legend(fontsize=6, loc="upper left")
        fig.suptitle("Dynamic batching through the router: the same function with and without `batching` "
                     "(c = concurrent calls)")  # fmt: skip
        fig.tight_layout()
        fig.savefig(out / "batching.png")
        plt.close(fig)
        made.append("batching.png")

    rg = sc.get("ring")
    if rg and rg.get("balance"):
        fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 3.9))
        ns = [b["nodes"] for b in rg["balance"]]
        a1.plot(ns, [b["ring"]["max_over_avg"] for b in rg["balance"]], "o-", color="#1f77b4",
                label=f"ring ({rg['vnodes_per_node']} vnodes/node): max")  # fmt: skip
        a1.plot(ns, [b["ring"]["min_over_avg"] for b in rg["balance"]], "o--", color="#1f77b4", alpha=0.6,
                label="ring: min")  # fmt: skip
        a1.plot(ns, [b["mod_n"]["max_over_avg"] for b in rg["balance"]], "s:", color="#ff7f0e",
                label="hash mod N: max")  # fmt: skip
        a1.axhline(1.0, color="#999", lw=0.8)
        for n, b in zip(ns, rg["balance"]):
            a1.annotate(f"{b['ring']['max_over_avg']:.2f}", (n, b["ring"]["max_over_avg"]), fontsize=7,
                        textcoords="offset points", xytext=(0, 5), ha="center")  # fmt: skip
        a1.set_xscale("log")
        a1.set_xlabel("nodes")
        a1.set_ylabel("functions owned ÷ average")
        a1.set_title(f"Balance: {rg['functions']:,} functions")
        a1.legend(fontsize=7)
        mv = rg["movement"]
        nm = [m["nodes"] for m in mv]
        a2.plot(nm, [m["join"]["fraction"] * 100 for m in mv], "o-", color="#1f77b4", label="ring: join")
        a2.plot(nm, [m["leave"]["fraction"] * 100 for m in mv], "^-", color="#2ca02c", label="ring: leave")
        a2.plot(nm, [m["join"]["ideal"] * 100 for m in mv], "k--", lw=0.8, label="ideal: 1/(N+1)")
        a2.plot(nm, [m["join"]["mod_n_fraction"] * 100 for m in mv], "s:", color="#ff7f0e", label="hash mod N: join")
        a2.set_xscale("log")
        a2.set_yscale("log")
        a2.set_xlabel("nodes before the change")
        a2.set_ylabel("functions whose owner changes, %")
        a2.set_title("Movement when one node joins or leaves")
        a2.legend(fontsize=7)
        bl = rg.get("bounded_load") or []
        if bl:
            nb = [x["nodes"] for x in bl]
            a3.plot(nb, [x["plain"]["max_over_avg"] for x in bl], "s:", color="#d62728", label="plain (ε huge): max/avg")
            a3.plot(nb, [x["bounded"]["max_over_avg"] for x in bl], "o-", color="#1f77b4",
                    label=f"bounded (ε={rg['workload']['default_bounds']['epsilon']}): max/avg")  # fmt: skip
            for n, x in zip(nb, bl):
                a3.annotate(f"{x['bounded']['hottest_function_nodes']} nodes", (n, x["bounded"]["max_over_avg"]),
                            fontsize=6.5, textcoords="offset points", xytext=(0, 6), ha="center")  # fmt: skip
                a3.annotate(f"{x['plain']['max_over_avg']:.1f}", (n, x["plain"]["max_over_avg"]), fontsize=6.5,
                            textcoords="offset points", xytext=(0, 5), ha="center")  # fmt: skip
            a3.set_xscale("log")
            a3.set_yscale("log")
            a3.set_ylim(0.8, max(x["plain"]["max_over_avg"] for x in bl) * 2)
            a3.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            a3.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            a3.set_xlabel("nodes")
            a3.set_ylabel("calls in flight on the busiest node ÷ average")
            w = rg["workload"]
            a3.set_title(f"Bounded load, Zipf(s={w['zipf_s']}) calls in flight\n(labels: nodes the hottest function uses)",
                         fontsize=8)  # fmt: skip
            a3.legend(fontsize=7)
        fig.suptitle("Scale on paper: the placement ring (policies::ring::Ring), simulated nodes")
        fig.tight_layout()
        fig.savefig(out / "ring.png")
        plt.close(fig)
        made.append("ring.png")
    return made


# --------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------


def _signed(v) -> str:
    """A difference with its sign: +12 or −12 (a true minus sign)."""
    if v is None:
        return "–"
    return ("+" if v >= 0 else "−") + _f(abs(v))


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(results, out)
    m = results["machine"]
    sc = results["scenarios"]
    s = results["settings"]
    md = [f"# Taskmesh benchmark results ({results['mode']} run)\n"]
    md.append(
        "Generated by `bash benchmarks/run.sh"
        + (" --quick" if results["mode"] == "quick" else "")
        + "`; raw numbers in [`results.json`](results.json), scenario docs in "
        "[`benchmarks/cases/`](../cases/). Speed is never asserted: these are "
        "measurements, reported as ratios against a baseline measured in the same run.\n"
    )
    md.append("## Machine\n")
    md.append(
        _table(
            ["what", "value"],
            [
                ["date (UTC)", m["date_utc"]],
                ["git commit", f"`{m['git_commit'][:12]}`" + (" (working tree had changes)" if m["git_dirty"] else "")],
                ["CPU", f"{m['nproc']} × {m['cpu_model']} ({m['cpus_usable']} usable)"],
                ["memory", f"{m['mem_gib']} GiB"],
                ["kernel", m["kernel"]],
                ["pinning", f"load generator (h2load) on CPU {m['loadgen_cpus']}, every server on CPUs {m['server_cpus']} (`taskset`)"],
                ["tools", f"{m['h2load']}; {m['haproxy']}; {m['nginx']}; {m['rustc']}; Python {m['python']}"],
                ["repetitions", f"{s['reps']} per measurement, medians reported; {s['duration']} s measured after {s['warmup']} s warm-up per h2load run"],
                ["load average", f"{results.get('loadavg_start', '?')} at the start, {results.get('loadavg_end', '?')} at the end (other work on the machine shows here)"],
            ],
        )
    )
    if m["server_cpus"] == m["loadgen_cpus"]:
        md.append("\n**Single CPU**: load generator and servers share it; absolute numbers are pessimistic.\n")
    if len(m["server_cpus"]) == 1:
        md.append(
            "\nWith one server core, every server configuration (Taskmesh's router and node, the proxy and "
            "the node, MLServer) shares that one core, so throughput is what one core serves.\n"
        )
    if results.get("errors"):
        md.append("\n## Failed scenarios\n")
        for k, v in results["errors"].items():
            md.append(f"- **{k}**: `{v.splitlines()[0]}`\n")
    for note in results.get("notes") or []:
        md.append(f"\n**Note.** {note}\n")
    for k, v in sc.items():
        if v.get("skipped"):
            md.append(f"\n**Skipped in {k}:** {v['skipped']}.\n")
    if results.get("carried_over"):
        md.append(
            "\n**Partial run.** This run measured "
            + ", ".join(k for k in sc if k not in results["carried_over"])
            + "; the other scenarios are carried over from earlier runs of this mode (not re-measured), "
            "so compare ratios within a scenario, not absolute numbers across scenarios. "
            "The machine table above describes this run; when each scenario was measured:\n"
        )
        rows = []
        for k, v in sc.items():
            ms = v.get("measured") or {}
            rows.append([k, ms.get("date_utc", "?"), f"`{str(ms.get('git_commit', '?'))[:12]}`"
                         + (" (dirty)" if ms.get("git_dirty") else ""),
                         ms.get("loadavg_start", "?"), "carried over" if k in results["carried_over"] else "this run"])  # fmt: skip
        md.append(_table(["scenario", "measured (UTC)", "commit", "load average at its start", ""], rows))

    md += _headlines(sc)

    ro = sc.get("router-overhead")
    if ro:
        md.append("\n## 1. Router overhead ([case](../cases/router-overhead/README.md))\n")
        cfg = ro["targets"]["direct"]["reps"]["throughput"][0]["config"]
        rows = []
        for n, t in ro["targets"].items():
            r = ro["ratios"].get(n, {})
            rows.append([
                f"**{n}**", t["what"],
                _f(t["latency_p50_us"]), _f(t["latency_p99_us"]),
                _x(r.get("p50_vs_direct")) if r else "1×",
                (_f(r.get("added_p50_us")) + (f" ({_f(r['added_p50_us_paired'])})" if "added_p50_us_paired" in r else "")) if r else "0",
                _f(t["throughput_rps"]), _x(r.get("throughput_vs_direct")) if r else "1×",
                _f(t["throughput_p99_us"]),
                _f(r.get("proxy_cpu_us_per_req"), 1) if r else "–",
            ])  # fmt: skip
        md.append(
            _table(
                ["path", "what", "p50 µs (1 stream)", "p99 µs (1 stream)", "p50 vs direct", "added p50 µs (paired)",
                 f"req/s ({cfg['conns']}×{cfg['streams']})", "req/s vs direct", "p99 µs under load",
                 "proxy CPU µs/req"],
                rows,
            )  # fmt: skip
        )
        md.append(
            "\n`added p50 µs` is the difference of the medians; `(paired)` is the median over repetitions of "
            "(this path's p50 − direct p50 in the same repetition), which cancels slow drift.\n"
        )
        md.append(
            "\nProxy CPU per request is measured under load from `/proc/<pid>/stat` (utime + stime): "
            "HAProxy's and NGINX's own processes; for Taskmesh, whose router and node share one process, "
            "the process's CPU per request through the router minus the same through the node directly. "
            f"Function `{ro['function']}`: the digits example plus a rate limit that never triggers. "
            "Cross-check: the router's own threads (Pingora workers, its main and background threads) used "
            f"{_f(ro['targets']['taskmesh'].get('cpu_us_per_req_taskmesh_router_threads'), 1)} µs of CPU per request.\n"
            "\nAt 1 stream, p99 is dominated by scheduling noise on a shared machine (every path shows "
            "milliseconds); compare p50s, and p99 under load.\n"
        )
        if ro.get("incidents"):
            md.append(
                f"\n**Incidents: the node stopped serving `{ro['function']}` {len(ro['incidents'])} time(s)** "
                "(no 200 within 3 s, twice, 2 s apart; `what` gives its answers and its pool). The harness "
                "restarted the stack each time and measured on; the rows above are from healthy stacks only.\n"
            )
            md.append(_table(["after", "before", "what"], [[i["after"], i["before"], i["what"]] for i in ro["incidents"]]))
        if "router_overhead.png" in plots:
            md.append("\n![router overhead](router_overhead.png)\n")

    cl = sc.get("cluster-limits")
    if cl:
        md.append("\n## 1b. Cluster-wide limits and the result cache ([case](../cases/cluster-limits/README.md))\n")
        rows = []
        for n, t in cl["targets"].items():
            rows.append([f"**{n}**", _f(t["p50_us_1_stream"]), _f(t["p99_us_1_stream"]), _f(t["rps_4x8"]),
                         _f(t.get("router_cpu_us_per_req_4x8"), 1) if n != "direct" else "–"])  # fmt: skip
        md.append(_table(["target", "p50 µs (1 stream)", "p99 µs (1 stream)", "req/s (4×8)", "router CPU µs/req"], rows))
        md.append(
            f"\nCluster mode on Redis. Limits (a rate limit and a daily quota that never refuse) cost "
            f"{_signed(cl['limits_cost_p50_us'])} µs p50 over the same function without them, and "
            f"{_x(cl['limited_vs_plain_rps'])} its throughput; a cache hit answers in {_f(cl['cache_hit_p50_us'])} µs "
            f"p50 ({_x(cl['cache_hit_vs_direct_p50'])} the node's own direct p50).\n"
        )

    pr = sc.get("protocols")
    if pr:
        md.append("\n## 1c. One call through each protocol ([case](../cases/protocols/README.md))\n")
        rows = []
        for n, row in pr["paths"].items():
            one, loaded, ratio = row["one_stream"], row["loaded"], pr["vs_rest_json"][n]
            rows.append([f"**{n}**", _f(one["p50_us"]), _f(one["p99_us"]), _f(loaded["rps"]),
                         _f(loaded.get("cpu_us_per_req"), 1), _x(ratio["p50"]), _x(ratio["throughput"])])  # fmt: skip
        md.append(_table(["path", "p50 µs (1 stream)", "p99 µs (1 stream)", "req/s (4×8)", "CPU µs/req (4×8)",
                          "p50 vs REST JSON", "req/s vs REST JSON"], rows))  # fmt: skip
        md.append("\nThe digits sample through `taskmesh up`: /v1 invoke, OIP REST (JSON and binary tensors) and "
                  "OIP gRPC (`ModelInfer`, raw contents).\n")  # fmt: skip

    tk = sc.get("tasks")
    if tk:
        md.append("\n## 1d. Tasks: asynchronous invocations ([case](../cases/tasks/README.md))\n")
        lo, bl = tk["low_load"], tk["backlog"]
        md.append(_table(
            ["measure", "synchronous call", "task (submit → result)", "task ÷ sync"],
            [["p50 ms (one at a time)", _f(lo["sync_p50_ms"], 2), _f(lo["task_p50_ms"], 2), _x(lo["ratio_p50"])],
             ["p99 ms (one at a time)", _f(lo["sync_p99_ms"], 2), _f(lo["task_p99_ms"], 2), ""],
             ["throughput /s", _f(bl["sync_rps"]), _f(bl["tasks_per_s"]), _x(bl["tasks_vs_sync_throughput"])]],
        ))  # fmt: skip
        md.append(f"\nA backlog of {bl['tasks']} digits tasks submitted at once (16 submitters, "
                  f"{_f(bl['submit_per_s'])} submits/s) on the embedded store; a task adds "
                  f"{_f(lo['added_p50_ms'], 2)} ms p50 over the synchronous call at low load.\n")  # fmt: skip

    vm = sc.get("vs-mlserver")
    if vm:
        md.append("\n## 2. Against a serving peer: MLServer ([case](../cases/vs-mlserver/README.md))\n")
        rows = []
        for n, srv in vm["servers"].items():
            for kind, v in srv["loads"].items():
                rat = (vm["ratios"].get(n) or {}).get(kind) or {}
                rows.append([
                    f"**{n}**", kind, _f(v["rps"]), _f(v["p50_us"]), _f(v["p99_us"]), _f(v["cpu_us_per_req"]),
                    _x(rat.get("throughput_taskmesh_vs_peer")) if rat else "",
                    _x(rat.get("p50_taskmesh_vs_peer")) if rat else "",
                ])  # fmt: skip
        md.append(
            _table(
                ["server", "load", "req/s", "p50 µs", "p99 µs", "server CPU µs/req",
                 "Taskmesh req/s ÷ this", "Taskmesh p50 ÷ this"],
                rows,
            )  # fmt: skip
        )
        md.append(
            "\n`h1_cN`: N HTTP/1.1 keep-alive connections, one request in flight on each (MLServer's REST "
            "server is uvicorn, HTTP/1.1 only). `h2c_mN`: Taskmesh only, one h2c connection with N streams. "
            "Same request body everywhere (`/v2/models/digits/infer`, 64 FP32); every server's answer is "
            "checked to be label 2 before timing.\n"
        )
        md.append("\n".join(f"- **{n}**: {srv['what']}" for n, srv in vm["servers"].items()))
        if "vs_mlserver.png" in plots:
            md.append("\n![vs MLServer](vs_mlserver.png)\n")

    fl = sc.get("floor")
    if fl:
        md.append("\n## 3. The floor: bare ONNX Runtime in-process ([case](../cases/floor/README.md))\n")
        rows = []
        direct = ro["targets"]["direct"]["latency_p50_us"] if ro else None
        router = ro["targets"]["taskmesh"]["latency_p50_us"] if ro else None
        for n, v in fl["models"].items():
            extra = []
            if n == "digits" and direct:
                extra = [_f(direct), _x(direct / v["p50_us"], 1), _f(router), _x(router / v["p50_us"], 1)]
            else:
                extra = ["", "", "", ""]
            rows.append([f"**{n}**", _f(v["p50_us"], 1), _f(v["p99_us"], 1), _f(v["session_load_us"] / 1e3, 1),
                         v["n"], *extra])  # fmt: skip
        md.append(
            _table(
                ["model", "run p50 µs", "run p99 µs", "session load ms", "calls",
                 "node direct p50 µs", "node ÷ floor", "router p50 µs", "router ÷ floor"],
                rows,
            )  # fmt: skip
        )
        md.append(
            f"\nONNX Runtime {fl['onnxruntime']} through its Python binding, one intra-op thread, inputs built "
            "once, `session.run` timed per call. The Python binding adds a few µs per call, so the true floor "
            "(the C API that Taskmesh calls through `ort`) is a little lower. A criterion floor in Rust would "
            "need `ort` in a bench target of the runtime crate; it is not there yet.\n"
        )
        if "floor_vs_platform.png" in plots:
            md.append("\n![floor vs platform](floor_vs_platform.png)\n")

    cs = sc.get("cold-start")
    if cs:
        md.append("\n## 4. Cold start per example model ([case](../cases/cold-start/README.md))\n")
        rows = []
        for n, v in cs["models"].items():
            floor_load = (fl or {}).get("models", {}).get(n, {}).get("session_load_us")
            parts = "–"
            if v.get("node_total_ms") is not None:
                parts = " + ".join(_f(v.get(f"node_{k}_ms"), 1) for k in ("fetch", "load", "first_run"))
                parts += f" = {_f(v['node_total_ms'], 1)}"
            rows.append([
                f"**{n}**", _size(v["model_bytes"]), _f(v["register_ms"], 1), _f(v["first_ms"], 2),
                _f(v["warm_p50_ms"], 2), _x(v["first_vs_warm"], 1), _f(v["cold_extra_ms"], 2), parts,
                _f(floor_load / 1e3, 1) if floor_load else "–",
                "/".join(v["first_cold_start_headers"]) + " → " + "/".join(v["warm_cold_start_headers"]),
            ])  # fmt: skip
        md.append(
            _table(
                ["model", "size", "register ms", "first call ms", "warm p50 ms", "first ÷ warm",
                 "cold extra ms", "node: fetch + load + first run ms", "ORT session load ms (floor)",
                 "x-taskmesh-cold-start first → warm"],
                rows,
            )  # fmt: skip
        )
        md.append(
            f"\nA fresh `taskmesh up --no-examples` per repetition (started in {_f(cs['startup_ms'])} ms, median), "
            f"one kept-alive HTTP/1.1 connection to the router, the first call then {cs['warm_calls']} warm calls. "
            "`register` is `taskmesh fn register` (a CLI process: it uploads the model and any tokenizer, then "
            "posts the definition; the registry loads the model once in ONNX Runtime to check it). "
            "`cold extra` = first − warm p50. The node's parts come from its own `cold start` log line: "
            "fetch (read and hash the model file), load (build the ONNX Runtime session), first run. "
            "The floor column is the same session build in Python, for comparison.\n"
        )
        if "cold_start.png" in plots:
            md.append("\n![cold start](cold_start.png)\n")

    ba = sc.get("batching")
    if ba:
        md.append("\n## 5. Dynamic batching ([case](../cases/batching/README.md))\n")
        rows = []
        for m, row in ba["models"].items():
            for c, lv in row["levels"].items():
                u, b, r = lv["unbatched"], lv["batched"], lv["ratio"]
                rows.append([
                    f"**{m}**", c,
                    _f(u["rps"]), _f(b["rps"]), _x(r["throughput"]),
                    _f(u["p50_us"]), _f(b["p50_us"]), _x(r["p50"]),
                    _f(u["p99_us"]), _f(b["p99_us"]), _x(r["p99"]),
                    _f(b.get("mean_batch_size"), 1),
                ])  # fmt: skip
        md.append(
            _table(
                ["model", "concurrent calls", "req/s unbatched", "req/s batched", "throughput batched ÷ unbatched",
                 "p50 µs unbatched", "p50 µs batched", "p50 ratio", "p99 µs unbatched", "p99 µs batched",
                 "p99 ratio", "mean calls per run (batched)"],
                rows,
            )  # fmt: skip
        )
        settings = "; ".join(
            f"{m}: `{json.dumps(row['batching'])}`" for m, row in ba["models"].items()
        )
        md.append(
            f"\nThrough the router (h2c), h2load with N connections × 1 stream, {_f(ba['duration_s'], 1)} s measured "
            f"after {_f(ba['warmup_s'], 1)} s of warm-up per run. Each model is registered twice, identical but for "
            f"`batching` ({settings}); both have `scaling` `{json.dumps(ba['scaling'])}`, so that concurrent "
            "calls meet at one instance. The same request body every time (the example's `sample.json`): for "
            "MiniLM every call has the same token count, which is what lets calls batch (see the case's README). "
            "`mean calls per run` is from the node's `taskmesh_runtime_batch_size` histogram over the run. Ratios "
            "above 1× in throughput and below 1× in latency favour batching.\n"
        )
        if ba.get("incidents"):
            md.append(f"\n**Incidents** ({len(ba['incidents'])}): a function stopped answering; the stack was restarted.\n")
            md.append(_table(["after", "before", "what"], [[i["after"], i["before"], i["what"]] for i in ba["incidents"]]))
        if "batching.png" in plots:
            md.append("\n![batching](batching.png)\n")

    mi = sc.get("micro")
    if mi:
        md.append("\n## 6. Micro-benchmarks ([case](../cases/micro/README.md))\n")
        rows = []
        for n, v in mi["benches"].items():
            thr = v.get("throughput") or {}
            per = ""
            if "Elements" in thr and thr["Elements"] > 1:
                per = _f(v["median_ns"] / thr["Elements"], 1, " ns/element")
            elif "Bytes" in thr:
                per = _f(thr["Bytes"] / v["median_ns"] * 1e9 / 2**20, 0, " MiB/s")
            rows.append([f"`{n}`", _f(v["median_ns"], 1), per])
        md.append(_table(["bench", "median ns", "rate"], rows))
        if "micro.png" in plots:
            md.append("\n![micro](micro.png)\n")

    rg = sc.get("ring")
    if rg:
        md.append("\n## 7. Scale on paper: ring balance ([case](../cases/ring/README.md))\n")
        md.append(
            f"\n`policies::ring::Ring` with {rg['vnodes_per_node']} virtual nodes per node, {rg['functions']:,} "
            f"function versions keyed like `{rg['key_example']}`, nodes `node-0` … `node-{{N-1}}`; "
            f"`policies/examples/ring_scale.rs` ({rg['profile']} build). Deterministic: another run gives the "
            "same placements.\n"
        )
        md.append("\n**Balance and movement**\n")
        rows = []
        for b, m in zip(rg["balance"], rg["movement"]):
            j, lv = m["join"], m["leave"]
            rows.append([
                b["nodes"], _f(b["ring"]["avg"], 1), _x(b["ring"]["max_over_avg"]), _x(b["ring"]["min_over_avg"]),
                _x(b["mod_n"]["max_over_avg"]),
                f"{j['fraction']:.2%} ({j['fraction'] / j['ideal']:.2f}× ideal)", j["moved_between_old_nodes"],
                f"{lv['fraction']:.2%} (leaver owned {lv['leaver_owned_fraction']:.2%})", lv["moved_not_from_leaver"],
                f"{j['mod_n_fraction']:.1%}", _f(b["owner_lookup_ns"]), _f(b["ring_build_ms"], 1),
            ])  # fmt: skip
        md.append(
            _table(
                ["nodes", "functions per node (avg)", "owned max ÷ avg", "owned min ÷ avg", "hash mod N max ÷ avg",
                 "moved on join", "moved between staying nodes", "moved on leave", "moved not from the leaver",
                 "hash mod N moved on join", "owner lookup ns", "ring build ms"],
                rows,
            )  # fmt: skip
        )
        md.append(
            "\nIdeal movement on a join is the newcomer's fair share, 1/(N+1). On a leave (the middle node, "
            "`node-{N/2}`), the ideal is to move exactly what the leaver owned, its share of the balance "
            "above (1/N on average). At 1,000 nodes there are only 10 functions per node, so max ÷ avg is "
            "dominated by chance, for `hash mod N` as much as for the ring. Owner lookup and ring build times are "
            "wall clock, for scale only.\n"
        )
        bl = rg.get("bounded_load") or []
        if bl:
            w = rg["workload"]
            md.append("\n**Bounded load under a skewed workload**\n")
            rows = []
            for x in bl:
                b, p = x["bounded"], x["plain"]
                rows.append([
                    x["nodes"], _f(x["calls_in_flight"]), f"{x['hottest_function_calls']} ({x['hottest_function_share']:.1%})",
                    _f(b["avg"], 1), f"{_f(p['max'])} ({_x(p['max_over_avg'])})", f"{_f(b['max'])} ({_x(b['max_over_avg'])})",
                    p["hottest_function_nodes"], b["hottest_function_nodes"], f"{b['off_owner_fraction']:.1%}",
                    _f(b["place_us_per_call"], 1),
                ])  # fmt: skip
            md.append(
                _table(
                    ["nodes", "calls in flight", "hottest function's calls", "avg in flight per node",
                     "max in flight: plain (÷ avg)", "max in flight: bounded (÷ avg)",
                     "nodes the hottest function uses: plain", "… bounded", "calls placed off their owner (bounded)",
                     "µs per `place` (bounded, wall clock)"],
                    rows,
                )  # fmt: skip
            )
            d = w["default_bounds"]
            md.append(
                f"\nCalls in flight at once: {w['calls_per_node']} per node on average, at least {w['min_calls']:,}; "
                f"each picks its function from a Zipf(s = {w['zipf_s']}) distribution over the {rg['functions']:,} "
                "functions, and is placed with `Ring::place` given every earlier call's node (none finishes). "
                f"*bounded* is `Bounds::default()` (ε = {d['epsilon']}, floor {d['floor']}); *plain* is ε = 10⁹, "
                "which never skips the owner: plain consistent hashing. The `place` time is a wall-clock average "
                "including the simulation's bookkeeping; criterion's numbers are in the micro table "
                "(`ring_place/*`).\n"
            )
        if "ring.png" in plots:
            md.append("\n![ring](ring.png)\n")
    # One blank line between blocks, so every heading, paragraph and table renders.
    (out / "summary.md").write_text("\n".join(x.strip("\n") + "\n" for x in md))


def _headlines(sc: dict) -> list[str]:
    h = []
    ro = sc.get("router-overhead")
    if ro:
        r = ro["ratios"].get("taskmesh", {})
        d = ro["targets"]["direct"]
        h.append(
            f"- **Router overhead**: one call through the Taskmesh router takes {_x(r.get('p50_vs_direct'))} the "
            f"direct p50 (+{_f(r.get('added_p50_us'))} µs; p99 {_x(r.get('p99_vs_direct'))}); under load it "
            f"serves {_x(r.get('throughput_vs_direct'))} the direct throughput ({_f(d['throughput_rps'])} req/s "
            f"direct), costing {_f(r.get('proxy_cpu_us_per_req'), 1)} µs of CPU per request."
        )
        for peer in ("haproxy", "nginx"):
            p = ro["ratios"].get(peer)
            if p and r:
                h.append(
                    f"  - vs {peer}: added p50 {_f(r.get('added_p50_us'))} µs vs {_f(p['added_p50_us'])} µs "
                    f"(router ÷ {peer} latency {_x(ro['targets']['taskmesh']['latency_p50_us'] / ro['targets'][peer]['latency_p50_us'])}); "
                    f"throughput {_x(ro['targets']['taskmesh']['throughput_rps'] / ro['targets'][peer]['throughput_rps'])} "
                    f"of {peer}'s; proxy CPU/req {_f(r.get('proxy_cpu_us_per_req'), 1)} vs {_f(p.get('proxy_cpu_us_per_req'), 1)} µs."
                )
    cl = sc.get("cluster-limits")
    if cl:
        h.append(
            f"- **Cluster-wide limits** (Redis, leased): {_signed(cl['limits_cost_p50_us'])} µs p50 over the same "
            f"function without limits; throughput {_x(cl['limited_vs_plain_rps'])}. **Cache hit**: "
            f"{_f(cl['cache_hit_p50_us'])} µs p50, {_x(cl['cache_hit_vs_direct_p50'])} the node's direct p50."
        )
    vm = sc.get("vs-mlserver")
    if vm:
        for peer, kinds in vm["ratios"].items():
            parts = []
            for kind, rat in kinds.items():
                parts.append(f"{kind}: {_x(rat['throughput_taskmesh_vs_peer'])} the throughput, "
                             f"{_x(rat['p50_taskmesh_vs_peer'])} the p50")  # fmt: skip
            h.append(f"- **vs {peer}** (Taskmesh ÷ {peer}): " + "; ".join(parts) + ".")
    fl = sc.get("floor")
    if fl and ro and "digits" in fl["models"]:
        f50 = fl["models"]["digits"]["p50_us"]
        h.append(
            f"- **Floor**: ONNX Runtime alone runs digits in {_f(f50, 1)} µs (p50); the node adds "
            f"{_f(ro['targets']['direct']['latency_p50_us'] - f50)} µs (HTTP/2, JSON, tensors, schema) and the "
            f"router {_f(ro['ratios']['taskmesh']['added_p50_us'])} µs more."
        )
    rust_floor = ((sc.get("micro") or {}).get("benches") or {}).get("ort_floor/digits_run")
    if rust_floor and ro:
        floor_us = rust_floor["median_ns"] / 1000
        h.append(
            f"- **Rust floor**: one digits run through `ort` (tensors in and out, no HTTP or JSON) takes "
            f"{_f(floor_us, 1)} µs; the node's direct p50 is {_f(ro['targets']['direct']['latency_p50_us'] - floor_us)} "
            f"µs above it."
        )
    cs = sc.get("cold-start")
    if cs and cs["models"]:
        parts = [f"{n} {_f(v['first_ms'], 1)} ms vs {_f(v['warm_p50_ms'], 2)} ms ({_x(v['first_vs_warm'], 0)})"
                 for n, v in cs["models"].items()]  # fmt: skip
        h.append("- **Cold start** (first call vs warm p50): " + "; ".join(parts) + ".")
    ba = sc.get("batching")
    if ba and ba.get("models"):
        parts = []
        for m, row in ba["models"].items():
            lv = row["levels"]
            hi, lo = str(max(ba["levels"])), str(min(ba["levels"]))
            parts.append(
                f"{m} at c={hi}: {_x(lv[hi]['ratio']['throughput'])} the throughput, p50 {_x(lv[hi]['ratio']['p50'])} "
                f"(mean batch {_f(lv[hi]['batched'].get('mean_batch_size'), 1)}); at c={lo}: p50 "
                f"{_f(lv[lo]['unbatched']['p50_us'])} → {_f(lv[lo]['batched']['p50_us'])} µs "
                f"({_signed(lv[lo]['ratio']['added_p50_us'])} µs, max_delay_us {row['batching']['max_delay_us']})"
            )
        h.append("- **Dynamic batching** (batched ÷ unbatched): " + "; ".join(parts) + ".")
    rg = sc.get("ring")
    if rg and rg.get("balance"):
        bal = "; ".join(f"{b['nodes']} nodes {_x(b['ring']['max_over_avg'])}" for b in rg["balance"])
        mv = "; ".join(f"{m['nodes']}→{m['nodes'] + 1} {m['join']['fraction']:.2%} (ideal {m['join']['ideal']:.2%})"
                       for m in rg["movement"])  # fmt: skip
        stray = sum(m["join"]["moved_between_old_nodes"] + m["leave"]["moved_not_from_leaver"] for m in rg["movement"])
        h.append(f"- **Ring** ({rg['functions']:,} functions): owned max ÷ avg {bal}. Moved on join: {mv}; "
                 + ("none between nodes that stayed, and a leave moved only the leaver's functions."
                    if stray == 0 else f"**{stray} functions moved between nodes that stayed**."))  # fmt: skip
        bl = rg.get("bounded_load") or []
        if bl:
            x = bl[-1]
            h.append(
                f"  - Bounded load, {x['nodes']} nodes, Zipf calls in flight: busiest node {_x(x['bounded']['max_over_avg'])} "
                f"the average with `Bounds::default()` vs {_x(x['plain']['max_over_avg'])} with plain consistent "
                f"hashing; the hottest function uses {x['bounded']['hottest_function_nodes']} nodes instead of 1, "
                f"and {x['bounded']['off_owner_fraction']:.0%} of calls land off their owner."
            )
    mi = sc.get("micro")
    if mi and any(k.startswith("ring_place/") for k in mi.get("benches", {})):
        parts = [f"{k.split('/', 1)[1].replace('_', ' ')} {_f(v['median_ns'] / 1000, 2)} µs"
                 for k, v in mi["benches"].items() if k.startswith("ring_place/")]  # fmt: skip
        h.append("- **Ring lookup** (criterion): " + "; ".join(parts) + ".")
    if not h:
        return []
    return ["## Headlines", "\n".join(h)]
