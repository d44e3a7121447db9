"""Writes summary.md and the PNG plots from a results dict (see bench.py)."""

from __future__ import annotations

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
    return made


# --------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------


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
    if results.get("carried_over"):
        md.append(f"\nCarried over from the previous run of this mode (not re-measured): {', '.join(results['carried_over'])}.\n")

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
                "(every call then timed out with 504, then was shed with 503, until restart). The harness "
                "restarted the stack each time and measured on; the rows above are from healthy stacks only.\n"
            )
            md.append(_table(["after", "before", "what"], [[i["after"], i["before"], i["what"]] for i in ro["incidents"]]))
        if "router_overhead.png" in plots:
            md.append("\n![router overhead](router_overhead.png)\n")

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

    md.append("\n## 5. Dynamic batching ([case](../cases/batching/README.md))\n")
    md.append(f"\nNot measured: {results['todo']['batching']}.\n")

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

    md.append("\n## 7. Scale on paper: ring balance ([case](../cases/ring/README.md))\n")
    md.append(f"\nNot measured: {results['todo']['ring']}.\n")
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
    cs = sc.get("cold-start")
    if cs and cs["models"]:
        parts = [f"{n} {_f(v['first_ms'], 1)} ms vs {_f(v['warm_p50_ms'], 2)} ms ({_x(v['first_vs_warm'], 0)})"
                 for n, v in cs["models"].items()]  # fmt: skip
        h.append("- **Cold start** (first call vs warm p50): " + "; ".join(parts) + ".")
    if not h:
        return []
    return ["## Headlines", "\n".join(h)]
