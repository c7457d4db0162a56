"""Render the pipeline's results: a markdown table and a size-vs-error plot (the Pareto front)."""

from __future__ import annotations

from pathlib import Path


def write_report(out: Path, meta: dict, rows: dict) -> None:
    teacher = rows.get("teacher fp32")
    lines = [f"Machine: {meta['machine']}. Date: {meta['date']}. Commit: {meta['commit']}.",
             f"Command: `{meta['command']}`", "",
             *([f"Test split: {', '.join(f'{n} {lang} clips' for lang, n in meta['test_clips'].items())}.", ""]
               if meta.get("test_clips") else []),
             "Relative changes carry their 95 % paired-bootstrap interval where both rows kept their predictions "
             "(benchmarks/significance.py).", "",
             "| model | size MB | ratio vs fp32 teacher | bits/weight | CER ja % | WER en % | rel. CER ja | rel. WER en "
             "| RTF transformers | RTF CTranslate2 | train wall s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        rel_c = rel_w = ""
        if teacher:
            ci = _intervals(teacher, r) if name != "teacher fp32" else {}
            rel_c = f"{100 * (r['cer_ja'] / teacher['cer_ja'] - 1):+.1f} %{ci.get('ja', '')}"
            rel_w = f"{100 * (r['wer_en'] / teacher['wer_en'] - 1):+.1f} %{ci.get('en', '')}"
        rtf_t = f"{r['rtf_transformers']:.3f}" if "rtf_transformers" in r else ""
        rtf_c = f"{r['rtf_ctranslate2']:.3f}" if "rtf_ctranslate2" in r else ""
        lines.append(f"| {name} | {r['size_bytes'] / 1e6:.1f} | {r['ratio']:.2f} | {r['bits_per_weight']:.2f} | "
                     f"{100 * r['cer_ja']:.2f} | {100 * r['wer_en']:.2f} | {rel_c} | {rel_w} | {rtf_t} | {rtf_c} | "
                     f"{r.get('train_wall_s', 0):.0f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[lines.index("") + 1:]), flush=True)
    _plot(out / "pareto.png", rows)


def _intervals(teacher: dict, row: dict) -> dict[str, str]:
    """" [low, high]" per language: the row's change against the teacher, paired clip by clip, where both rows
    kept their predictions (rows of runs before 2026-12-02 did not)."""
    if not (Path(teacher.get("predictions", "")).is_file() and Path(row.get("predictions", "")).is_file()):
        return {}
    from significance import read_predictions

    from whisper_kdq.evaluate.compare import compare_predictions

    changes = compare_predictions(read_predictions(Path(teacher["predictions"])), read_predictions(Path(row["predictions"])))
    return {lang: f" [{100 * c.low:+.1f}, {100 * c.high:+.1f}]" for lang, c in changes.items() if c.low is not None}


def _plot(path: Path, rows: dict) -> None:
    """Size against CER ja and WER en. Points carry the row's number (the legend below names them): with ~25
    rows, names written beside the points overlapped. The fp32 teacher is a horizontal line (its error), not a
    point 5x to the right of the rest; errors past three times the teacher's are drawn at the top edge
    (triangles) so that a few failed rows do not squash the others."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    legend_in = 0.17 * ((len(rows) + 1) // 2) + 0.3  # height of the two-column legend, inches
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5 + legend_in))
    palette = plt.get_cmap("tab20").colors
    number = {name: i + 1 for i, name in enumerate(rows)}
    colour = {name: palette[i % len(palette)] for i, name in enumerate(rows)}  # one colour per row in both panels
    colour["teacher fp32"] = "black"
    teacher = rows.get("teacher fp32")
    for ax, key, label in ((axes[0], "cer_ja", "CER ja %"), (axes[1], "wer_en", "WER en %")):
        points = sorted((r["size_bytes"] / 1e6, 100 * r[key], name) for name, r in rows.items()
                        if name != "teacher fp32")
        if not points:
            continue
        top = max(y for _, y, _ in points) * 1.05
        if teacher:
            top = min(top, 300 * teacher[key])
            ax.axhline(100 * teacher[key], color="black", linestyle=":",
                       label=f"{number['teacher fp32']}. teacher fp32 ({teacher['size_bytes'] / 1e6:.0f} MB)")
            ax.legend(loc="upper right", fontsize=7)
        for x, y, name in points:
            off = y > top
            ax.scatter(x, min(y, top), color=colour[name], marker="^" if off else "o", s=36)
            ax.annotate(str(number[name]), (x, min(y, top)), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front, best = [], float("inf")
        for x, y, _ in points:  # smallest error so far, by increasing size
            if y < best:
                front.append((x, y))
                best = y
        if front:
            ax.step([x for x, _ in front], [y for _, y in front], where="post", color="gray", linestyle="--")
        ax.set_ylim(0, top * 1.04)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlabel("packed size (MB, log)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", linestyle=":" if n == "teacher fp32" else "", color=colour[n]) for n in rows]
    fig.legend(handles, [f"{number[n]}. {n}" for n in rows], loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.suptitle("whisper-kdq: size vs error on the synthesized test split (dashed: Pareto front; "
                 "triangles: off the chart)")
    fig.tight_layout(rect=(0, legend_in / (5.5 + legend_in), 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)
