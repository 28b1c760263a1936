"""The suite's outputs: derived figures (clips/s, TFLOP/s, speedups, targets), JSON, Markdown and a PNG."""

from __future__ import annotations

import json
import os

from bench._common import write_json, write_text
from bench.e2e import COMPILE, EAGER

TRITON, GRAPHS, SDPA = "timesformer triton", "timesformer triton + graphs", "timesformer sdpa"


def derive(result: dict) -> None:
    """Fill in each end-to-end row's clips/s, TFLOP/s, fraction of the measured matrix peak and speedups
    over ``transformers`` eager and compiled (same config, dtype and batch, same run), and the targets."""
    rows = result["e2e"]
    by_key = {(r["config"], r["dtype"], r["batch"], r["impl"]): r for r in rows}
    for r in rows:
        ms = r.get("median_ms")
        for key in ("clips_per_s", "tflops", "fraction_of_peak", "speedup_vs_eager", "speedup_vs_compile"):
            r.setdefault(key, None)
        if r["status"] != "ok" or not ms:
            continue
        r["clips_per_s"] = r["batch"] / ms * 1e3
        if r.get("flops"):
            r["tflops"] = r["flops"] / ms / 1e9
            peak = result.get("peak_tflops", {}).get(r["dtype"])
            r["fraction_of_peak"] = r["tflops"] / peak if peak else None
        for base, key in ((EAGER, "speedup_vs_eager"), (COMPILE, "speedup_vs_compile")):
            if r["impl"] == base:
                continue
            other = by_key.get((r["config"], r["dtype"], r["batch"], base))
            paired = r.get("paired_" + key)
            if paired is not None:  # CPU: median of per-round ratios
                r[key] = paired
            elif other and other["status"] == "ok" and other.get("median_ms"):
                r[key] = other["median_ms"] / ms
    result["targets"] = targets(result)


def _get(result: dict, config: str, dtype: str, batch: int, impl: str) -> dict | None:
    for r in result["e2e"]:
        if (r["config"], r["dtype"], r["batch"], r["impl"]) == (config, dtype, batch, impl) and r[
            "status"
        ] == "ok":
            return r
    return None


def targets(result: dict) -> list[dict]:
    """The benchmark issue's targets that this run's rows can answer (others are left out)."""
    out = []

    def add(name, value, goal, met, unit=""):
        out.append({"target": name, "value": value, "goal": goal, "met": bool(met), "unit": unit})

    t32 = _get(result, "base", "bfloat16", 32, TRITON)
    if t32:
        if t32.get("speedup_vs_eager") is not None:
            v = t32["speedup_vs_eager"]
            add("base bf16 batch 32: triton vs transformers eager", v, ">= 2.5x", v >= 2.5, "x")
        if t32.get("speedup_vs_compile") is not None:
            v = t32["speedup_vs_compile"]
            add("base bf16 batch 32: triton vs transformers + compile", v, ">= 1.3x", v >= 1.3, "x")
        if t32.get("fraction_of_peak") is not None:
            v = t32["fraction_of_peak"]
            add("base bf16 batch 32: model FLOPs / measured bf16 matrix peak", v, ">= 55%", v >= 0.55, "%")
        e32 = _get(result, "base", "bfloat16", 32, EAGER)
        if e32 and e32.get("peak_mem_gib") and t32.get("peak_mem_gib") is not None:
            v = t32["peak_mem_gib"] / e32["peak_mem_gib"]
            add("base bf16 batch 32: peak memory, triton / transformers eager", v, "<= 0.6x", v <= 0.6, "x")
    g1 = _get(result, "base", "bfloat16", 1, GRAPHS)
    if g1:
        v = g1["median_ms"]
        add("base bf16 batch 1: triton + CUDA graphs, ms per clip", v, "<= 1.5 ms", v <= 1.5, "ms")
    for k in result.get("kernels", []):
        if k.get("batch") != 32 or k.get("dtype") != "bfloat16" or k.get("status", "ok") != "ok":
            continue
        name, speedup = k["kernel"], k.get("speedup")
        if name == "temporal attention":
            v = k["fraction_of_roofline"]
            add("temporal attention, batch 32: share of the measured copy rate", v, ">= 70%", v >= 0.70, "%")
            add("temporal attention, batch 32: vs the reference path", speedup, ">= 3x", speedup >= 3, "x")
        elif name == "spatial attention":
            add("spatial attention, batch 32: vs the reference path", speedup, ">= 1.5x", speedup >= 1.5, "x")
        elif name == "patch embedding":
            add("patch embedding, batch 32: vs the reference path", speedup, ">= 2x", speedup >= 2, "x")
        elif k.get("bare_product_ms"):
            v = k["ms"] / k["bare_product_ms"]
            add(f"{name}, batch 32: time / bare cuBLAS product", v, "<= 1.1x", v <= 1.1, "x")
            add(f"{name}, batch 32: vs the unfused sequence", speedup, ">= 1.2x", speedup >= 1.2, "x")
    s1 = _get(result, "base", "float32", 1, SDPA)
    if s1 and result["device"]["type"] == "cpu" and s1.get("speedup_vs_eager") is not None:
        v = s1["speedup_vs_eager"]
        add(
            "CPU base fp32 batch 1: sdpa vs transformers eager (median of paired runs)",
            v,
            ">= 1.1x",
            v >= 1.1,
            "x",
        )
    return out


def _fmt(v, spec: str, none: str = "") -> str:
    return none if v is None else format(v, spec)


def markdown(result: dict, png_name: str | None = None) -> str:
    dev, ver = result["device"], result["versions"]
    extra = (
        f", driver {dev['driver']}, CUDA {dev['cuda']}"
        if dev["type"] == "cuda"
        else f", {dev.get('cores')} cores"
    )
    lines = [
        f"# TimeSformer benchmark: {dev['name']}",
        "",
        f"{result['date']} · commit `{result['commit']}` · {dev['name']}{extra} · torch {ver['torch']} · "
        f"Triton {ver.get('triton')} · transformers {ver.get('transformers')} · timesformer {ver.get('timesformer')}",
        "",
        f"Suite: `{result['command']}` ({result['mode']}). Random weights; each implementation's logits are checked "
        "against `transformers` eager in float32 before timing (a wrong answer is reported, not timed). "
        + (
            "GPU times: median of CUDA-event timings after warm-up; peak memory is the implementation's own "
            "(weights, caches, activations), inputs excluded."
            if dev["type"] == "cuda"
            else "CPU times: wall clock, implementations alternating round by round; speedups are medians of "
            "the per-round ratios. Peak memory is measured on GPUs only."
        ),
        "",
    ]
    peaks = result.get("peak_tflops", {})
    if peaks:
        lines += [
            "Matrix peak measured in this run (large square product through torch): "
            + ", ".join(f"{k} {v:.3g} TFLOP/s" for k, v in peaks.items()),
            "",
        ]
    if result.get("copy_gbps"):
        lines += [f"Device-to-device copy rate measured in this run: {result['copy_gbps']:.0f} GB/s", ""]
    if png_name:
        lines += [f"![clips/s by batch size, and kernels against their roofline]({png_name})", ""]
    if result["e2e"]:
        lines += [
            "## End to end (inference, logits)",
            "",
            "TFLOP/s counts the model's FLOPs after the algebra (`timesformer.flops.count_flops`, 369.1 GFLOP "
            "per base clip) for every implementation, so it is proportional to clips/s. This package's "
            "classifier also skips the last layer's non-CLS rows (5% of base), so on a matrix-bound CPU its "
            "rate by this count can pass 100% of the measured peak.",
            "",
            "| model | dtype | batch | implementation | ms | clips/s | TFLOP/s | % peak | peak GiB | vs eager | "
            "vs compile | status |",
            "|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for r in result["e2e"]:
            pct = None if r.get("fraction_of_peak") is None else 100 * r["fraction_of_peak"]
            lines.append(
                f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['impl']} | {_fmt(r['median_ms'], '.2f')} | "
                f"{_fmt(r.get('clips_per_s'), '.3g')} | {_fmt(r.get('tflops'), '.2f')} | {_fmt(pct, '.1f')} | "
                f"{_fmt(r.get('peak_mem_gib'), '.2f')} | {_fmt(r.get('speedup_vs_eager'), '.2f', '')}"
                f"{'x' if r.get('speedup_vs_eager') is not None else ''} | "
                f"{_fmt(r.get('speedup_vs_compile'), '.2f')}{'x' if r.get('speedup_vs_compile') is not None else ''} | "
                f"{r['status']} |"
            )
        lines.append("")
    if result["kernels"]:
        lines += [
            "## Kernels",
            "",
            "| kernel | batch | ours ms | baseline | baseline ms | speedup | bare product ms | achieved | "
            "% of roofline |",
            "|---|--:|--:|---|--:|--:|--:|--:|--:|",
        ]
        for k in result["kernels"]:
            pct = None if k.get("fraction_of_roofline") is None else 100 * k["fraction_of_roofline"]
            achieved = "" if k.get("achieved") is None else f"{k['achieved']:.1f} {k['unit']}"
            roof = "" if pct is None else f"{pct:.0f}% of {k['roofline']}"
            speedup = "" if k.get("speedup") is None else f"{k['speedup']:.2f}x"
            if k.get("status", "ok") != "ok":
                roof = k["status"]
            lines.append(
                f"| {k['kernel']} | {k['batch']} | {_fmt(k.get('ms'), '.3f')} | {k['baseline']} | "
                f"{_fmt(k.get('baseline_ms'), '.3f')} | {speedup} | {_fmt(k.get('bare_product_ms'), '.3f')} | "
                f"{achieved} | {roof} |"
            )
        lines.append("")
    if result.get("evaluate"):
        from .bench_evaluate import markdown as evaluate_markdown

        lines += evaluate_markdown(result["evaluate"])
    if result.get("targets"):
        lines += ["## Targets", "", *_targets_table(result["targets"]), ""]
    return "\n".join(lines)


def _targets_table(targets: list[dict]) -> list[str]:
    lines = ["| target | goal | measured | met |", "|---|---|--:|---|"]
    for t in targets:
        value = f"{100 * t['value']:.1f}%" if t["unit"] == "%" else f"{t['value']:.2f}{t['unit']}"
        lines.append(f"| {t['target']} | {t['goal']} | {value} | {'yes' if t['met'] else '**no**'} |")
    return lines


def plot(result: dict, path: str) -> str | None:
    """clips/s by batch size per implementation (one panel per model and dtype) and, when kernel rows
    exist, each kernel's fraction of its roofline. Returns None (and writes nothing) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    groups: dict[tuple, list] = {}
    for r in result["e2e"]:
        if r["status"] == "ok" and r.get("clips_per_s"):
            groups.setdefault((r["model"], r["dtype"]), []).append(r)
    kernels = [k for k in result["kernels"] if k.get("fraction_of_roofline") is not None]
    speedups = [k for k in result["kernels"] if k.get("speedup")] if not kernels else []
    panels = len(groups) + (1 if kernels or speedups else 0)
    if panels == 0:
        return None
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    for ax, ((model, dtype), rows) in zip(axes[0], groups.items(), strict=False):
        impls = list(dict.fromkeys(r["impl"] for r in rows))
        batches = sorted({r["batch"] for r in rows})
        if len(batches) == 1:  # one batch size: bars, a line would be a dot
            values = [next(r["clips_per_s"] for r in rows if r["impl"] == i) for i in impls]
            ax.barh(impls, values, color="tab:blue")
            ax.set_xlabel(f"clips/s at batch {batches[0]}")
        else:
            for impl in impls:
                pts = sorted((r["batch"], r["clips_per_s"]) for r in rows if r["impl"] == impl)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch size")
            ax.set_ylabel("clips/s")
            ax.legend(fontsize=7)
        ax.set_title(f"{model}, {dtype}", fontsize=9)
        ax.grid(alpha=0.3)
    if kernels:
        ax = axes[0][-1]
        labels = [f"{k['kernel']} B={k['batch']}" for k in kernels]
        ax.barh(labels, [100 * k["fraction_of_roofline"] for k in kernels], color="tab:green")
        ax.set_xlabel("% of roofline (copy rate or matrix peak, measured)")
        ax.set_xlim(0, 100)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title("kernels", fontsize=9)
    elif speedups:  # CPU: no roofline; how much faster each op is than the reference's path
        ax = axes[0][-1]
        ax.barh([k["kernel"] for k in speedups], [k["speedup"] for k in speedups], color="tab:green")
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_xlabel("speedup over the reference path")
        ax.set_title("ops (CPU)", fontsize=9)
    fig.suptitle(
        f"{result['device']['name']} · {result['date'][:10]} · commit {result['commit']}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(result: dict, out_dir: str, stem: str, plot_png: bool = True) -> dict[str, str]:
    """``<stem>.json``, ``<stem>.md`` and (``plot_png``) ``<stem>.png`` in ``out_dir``; returns the paths
    written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, stem + ".json")}
    png = plot(result, os.path.join(out_dir, stem + ".png")) if plot_png else None
    if png:
        paths["png"] = png
    paths["md"] = os.path.join(out_dir, stem + ".md")
    write_text(paths["md"], markdown(result, os.path.basename(png) if png else None))
    result["outputs"] = {k: os.path.basename(v) for k, v in paths.items()}
    write_json(paths["json"], result)
    return paths


README_BEGIN, README_END = "<!-- gpu-results:begin -->", "<!-- gpu-results:end -->"


def readme_section(result: dict, json_rel: str) -> str:
    """The README's GPU table from one run's JSON (``json_rel``: its path from the README): every end-to-end
    row of the run with clips/s, ms, speed against ``transformers`` eager and compiled, % of the matrix peak
    measured in that run and peak memory, then the targets."""
    dev, ver = result["device"], result["versions"]
    peaks = ", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in result.get("peak_tflops", {}).items())
    copy = f", copy rate {result['copy_gbps']:.0f} GB/s" if result.get("copy_gbps") else ""
    stem = os.path.splitext(json_rel)[0]
    lines = [
        f"Measured on {dev['name']} (driver {dev.get('driver')}, CUDA {dev.get('cuda')}), {result['date'][:10]}, "
        f"commit `{result['commit']}`, torch {ver['torch']}, Triton {ver.get('triton')}, transformers "
        f"{ver.get('transformers')}; ceilings measured in the same run: {peaks}{copy}. Random weights, logits "
        f"checked against float32 `transformers` eager before timing; medians of CUDA-event timings "
        f"([JSON]({json_rel}), [table]({stem}.md), [plot]({stem}.png)).",
        "",
        "| model | dtype | batch | implementation | ms | clips/s | vs eager | vs compiled | % of peak | peak GiB |",
        "|---|---|--:|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in result["e2e"]:
        if r["status"] != "ok":
            lines.append(
                f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['impl']} | {r['status']} | | | | | |"
            )
            continue
        pct = None if r.get("fraction_of_peak") is None else 100 * r["fraction_of_peak"]
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['impl']} | {r['median_ms']:.2f} | "
            f"{_fmt(r.get('clips_per_s'), '.1f')} | {_fmt(r.get('speedup_vs_eager'), '.2f')} | "
            f"{_fmt(r.get('speedup_vs_compile'), '.2f')} | {_fmt(pct, '.1f')} | {_fmt(r.get('peak_mem_gib'), '.2f')} |"
        )
    if result.get("targets"):
        lines += ["", *_targets_table(result["targets"])]
    return "\n".join(lines)


def update_readme(readme: str, result: dict, json_path: str) -> None:
    """Replace the text between the README's ``gpu-results`` markers with ``readme_section``."""
    with open(readme) as f:
        text = f.read()
    if text.count(README_BEGIN) != 1 or text.count(README_END) != 1:
        raise SystemExit(f"{readme}: expected one {README_BEGIN} and one {README_END} marker")
    head, rest = text.split(README_BEGIN)
    _, tail = rest.split(README_END)
    rel = os.path.relpath(os.path.abspath(json_path), os.path.dirname(os.path.abspath(readme)))
    with open(readme, "w") as f:
        f.write(f"{head}{README_BEGIN}\n{readme_section(result, rel)}\n{README_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    """Re-render the Markdown and PNG of a run from its JSON: ``python -m bench.report RUN.json``; with
    ``--readme README.md``, also put its GPU table in the README (between the ``gpu-results`` markers)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    parser.add_argument("json_path")
    parser.add_argument("--readme", default=None, help="a README with the gpu-results markers to update")
    args = parser.parse_args(argv)
    with open(args.json_path) as f:
        result = json.load(f)
    derive(result)
    out_dir, name = os.path.split(os.path.abspath(args.json_path))
    for path in write_all(result, out_dir, os.path.splitext(name)[0]).values():
        print(f"wrote {path}")
    if args.readme:
        if result["device"]["type"] != "cuda":
            raise SystemExit(f"{args.json_path}: not a GPU run (device {result['device']['name']})")
        update_readme(args.readme, result, args.json_path)
        print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
