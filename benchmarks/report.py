"""Render the pipeline's results: a markdown table and a size-vs-error plot (the Pareto front)."""

from __future__ import annotations

from pathlib import Path


def write_report(out: Path, meta: dict, rows: dict) -> None:
    teacher = rows.get("teacher fp32")
    lines = [f"Machine: {meta['machine']}. Date: {meta['date']}. Commit: {meta['commit']}.",
             f"Command: `{meta['command']}`", "",
             "| model | size MB | ratio vs fp32 teacher | bits/weight | CER ja % | WER en % | rel. CER ja | rel. WER en "
             "| RTF transformers | RTF CTranslate2 | train wall s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        rel_c = rel_w = ""
        if teacher:
            rel_c = f"{100 * (r['cer_ja'] / teacher['cer_ja'] - 1):+.1f} %"
            rel_w = f"{100 * (r['wer_en'] / teacher['wer_en'] - 1):+.1f} %"
        rtf_t = f"{r['rtf_transformers']:.3f}" if "rtf_transformers" in r else ""
        rtf_c = f"{r['rtf_ctranslate2']:.3f}" if "rtf_ctranslate2" in r else ""
        lines.append(f"| {name} | {r['size_bytes'] / 1e6:.1f} | {r['ratio']:.2f} | {r['bits_per_weight']:.2f} | "
                     f"{100 * r['cer_ja']:.2f} | {100 * r['wer_en']:.2f} | {rel_c} | {rel_w} | {rtf_t} | {rtf_c} | "
                     f"{r.get('train_wall_s', 0):.0f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[3:]), flush=True)
    _plot(out / "pareto.png", rows)


def _plot(path: Path, rows: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    palette = plt.get_cmap("tab20").colors
    colour = {name: palette[i % len(palette)] for i, name in enumerate(rows)}  # one colour per row in both panels
    for ax, key, label in ((axes[0], "cer_ja", "CER ja %"), (axes[1], "wer_en", "WER en %")):
        points = sorted((r["size_bytes"] / 1e6, 100 * r[key], name) for name, r in rows.items())
        for x, y, name in points:
            ax.scatter(x, y, color=colour[name])
            ax.annotate(name, (x, y), fontsize=6)
        front, best = [], float("inf")
        for x, y, _ in points:  # smallest error so far, by increasing size
            if y < best:
                front.append((x, y))
                best = y
        if front:
            ax.step([x for x, _ in front], [y for _, y in front], where="post", color="gray", linestyle="--")
        ax.set_xscale("log")
        ax.set_xlabel("packed size (MB, log)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    fig.suptitle("whisper-kdq: size vs error on the synthesized test split (dashed: Pareto front)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
