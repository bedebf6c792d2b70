"""Self-contained HTML reports: one file, images inlined as base64 data URIs, no scripts, no external links.

The pages are rendered from the JSON dicts that ``evaluation.json`` holds (see
:meth:`mnistlab.analysis.Evaluation.to_dict`), so a report always shows exactly the saved figures. Every text
that comes from a run (paths, class names) is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
from collections.abc import Mapping, Sequence
from typing import Any

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
.warn { color: #a40000; font-weight: 600; }
h3 { margin-top: 1.6rem; }
.meta { color: #555; font-size: .9rem; } code { background: #f3f3f3; padding: 0 .25rem; border-radius: 3px; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; } thead th { background: #f5f5f7; }
td.bad { background: #fde8e8; } td.good { background: #e8f6ea; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: .5rem 0; }
.note { color: #555; font-size: .85rem; } .missing { color: #b00020; font-weight: 600; }
.cols { display: flex; flex-wrap: wrap; gap: 1.5rem; } .cols > div { flex: 1 1 520px; min-width: 0; }
"""


def esc(value: Any) -> str:
    """HTML-escaped text of ``value``."""
    return html.escape(str(value), quote=True)


def data_uri_img(png: bytes, alt: str) -> str:
    """An ``<img>`` whose source is the PNG itself (base64), so the page needs no other file."""
    encoded = base64.b64encode(png).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{encoded}">'


def pct(value: float | None, digits: int = 2) -> str:
    """``0.98765`` -> ``98.77%``; None -> ``n/a``."""
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def num(value: float | None, digits: int = 4) -> str:
    """A number formatted for the report, or an empty cell for None."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (for cells already rendered as HTML)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell if raw else esc(cell)}</td>" for cell in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: str) -> str:
    """A complete HTML5 document with the inline style sheet."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{esc(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n"
            f'<p class="note">Written by mnistlab on {stamp}. This file is self-contained: it opens offline.</p>\n'
            "</body>\n</html>\n")


# ------------------------------------------------------------------------------------------ evaluation
def summary_rows(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(figure, value) rows of an evaluation's headline numbers."""
    rows = [("images", f"{data['count']:,}"), ("accuracy", pct(data["accuracy"])), ("error", pct(data["error"])),
            ("loss (cross-entropy)", "n/a (no probabilities)" if data["loss"] is None else num(data["loss"]))]
    rows += [(f"top-{k} accuracy", pct(v)) for k, v in data["top_k"].items()]
    cal = data.get("calibration")
    if cal:
        rows += [(f"expected calibration error ({cal['bins']} bins)", pct(cal["ece"])),
                 ("maximum calibration error", pct(cal["mce"]))]
    else:
        rows.append(("calibration", "n/a: this model gives decision values, not probabilities"))
    scaled = data.get("temperature_scaling")
    if scaled and "stale" in scaled:
        rows.append(("temperature scaling", f"not applied: {scaled['stale']}"))
    elif scaled:
        rows += [(f"ECE after temperature scaling (T = {scaled['temperature']:.3f}, fitted on {scaled['fitted_on']})",
                  f"{pct(scaled['ece_after'])} (before {pct(scaled['ece_before'])})"),
                 ("loss after temperature scaling", f"{num(scaled['nll_after'])} (before {num(scaled['nll_before'])})"),
                 (f"not sure (top probability < {scaled['threshold']:.4f})",
                  f"{pct(scaled['not_sure_fraction'])} of images; the others {pct(scaled['answered_accuracy'])} "
                  "accurate")]
    published = data.get("published")
    if published and data["split"] == "test":
        rows.append((f"published: {published['method']}", f"{pct(published['test_error'])} error "
                                                           f"({published['source']})"))
    if data.get("same_data") is False:
        rows.append(("data", "OTHER DATA: not the images this run was trained and tested on (SHA-256 differs); "
                             "this is not the run's own score"))
    recorded = data.get("recorded_test_accuracy")
    if recorded is not None and data["split"] == "test" and data.get("same_data") is not False:
        same = abs(recorded - data["accuracy"]) < 1e-12
        rows.append(("test accuracy recorded at training", f"{pct(recorded)} ({'matches' if same else 'differs'})"))
    return rows


def classification_rows(data: Mapping[str, Any], digits: int = 4) -> list[list[str]]:
    """The per-class table of scikit-learn's classification_report, as rows."""
    report = data["classification_report"]
    rows = []
    for name in data["class_names"]:
        cell = report[str(name)]
        rows.append([str(name), *(f"{cell[key]:.{digits}f}" for key in ("precision", "recall", "f1-score")),
                     str(int(cell["support"]))])
    rows.append(["accuracy", "", "", f"{report['accuracy']:.{digits}f}", str(data["count"])])
    for key in ("macro avg", "weighted avg"):
        cell = report[key]
        rows.append([key, *(f"{cell[k]:.{digits}f}" for k in ("precision", "recall", "f1-score")),
                     str(int(cell["support"]))])
    return rows


def confusion_table(data: Mapping[str, Any]) -> str:
    """Counts, rows true and columns predicted; mistakes shaded."""
    names = [str(n) for n in data["class_names"]]
    head = "<th>true \\ predicted</th>" + "".join(f"<th>{esc(n)}</th>" for n in names)
    body = ""
    for i, row in enumerate(data["confusion"]):
        cells = "".join(f'<td class="{"good" if i == j else ("bad" if v else "")}">{v}</td>'
                        for j, v in enumerate(row))
        body += f"<tr><th>{esc(names[i])}</th>{cells}</tr>"
    return f'<table class="confusion"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def pairs_rows(data: Mapping[str, Any]) -> list[list[str]]:
    """Table rows for the most confused class pairs."""
    names = data["class_names"]
    return [[str(names[p["true"]]), str(names[p["predicted"]]), str(p["count"]), pct(p["fraction_of_true"])]
            for p in data["most_confused"]]


def mistakes_rows(data: Mapping[str, Any]) -> list[list[str]]:
    """Table rows for the most confident mistakes."""
    names = data["class_names"]
    decision = data["score_kind"] == "decision"
    return [[f"#{m['index']}", str(names[m["true"]]), str(names[m["predicted"]]),
             num(m["confidence"], 3) if decision else pct(m["confidence"]),
             "n/a" if m["true_probability"] is None else pct(m["true_probability"])]
            for m in data["worst_mistakes"]]


def calibration_rows(cal: Mapping[str, Any]) -> list[list[str]]:
    """Table rows for the reliability bins."""
    rows = []
    for b in range(cal["bins"]):
        acc, conf = cal["accuracy"][b], cal["confidence"][b]
        rows.append([f"({cal['edges'][b]:.3f}, {cal['edges'][b + 1]:.3f}]", f"{cal['count'][b]:,}",
                     pct(acc), pct(conf), "" if acc is None else pct(abs(acc - conf))])
    return rows


def training_section(training: Mapping[str, Any], images: Mapping[str, bytes], *, heading: str = "h2") -> str:
    """How the model was made: every setting, what ran (device, precision), how far it got, and its curves."""
    h = heading
    status = str(training.get("status"))
    done, planned = training.get("epochs_completed"), training.get("epochs")
    marker = "" if status in ("completed", "stopped") else " class=\"warn\""
    rows = [("status", f"{status}: {done} of {planned} epochs completed"),
            ("ran on", f"{training.get('ran_on') or 'cpu'} in {training.get('ran_in') or 'fp32'}")]
    if training.get("train_seconds") is not None:
        rows.append(("training time", f"{training['train_seconds']:.1f} s"))
    rows += [(key.replace("_", " "), str(value)) for key, value in training.get("settings", {}).items()]
    parts = [f"<{h}>How this model was made</{h}>", f"<p{marker}>Status: <b>{esc(status)}</b> after {esc(done)} "
             f"of {esc(planned)} epochs.</p>", table(["setting", "value"], rows)]
    history = training.get("history") or []
    if history:
        parts.append(table(["epoch", "loss", "accuracy", "val loss", "val accuracy", "lr"],
                           [[str(r.get("epoch")), num(r.get("loss")), num(r.get("accuracy")), num(r.get("val_loss")),
                             num(r.get("val_accuracy")), "" if r.get("lr") is None else f"{r['lr']:.3g}"]
                            for r in history]))
    if "curves_png" in images:
        parts.append(data_uri_img(images["curves_png"], "training curves"))
    return "\n".join(parts)


def evaluation_body(data: Mapping[str, Any], images: Mapping[str, bytes], *, heading: str = "h2") -> str:
    """The sections of one evaluation (used by the evaluation page and, per run, by the comparison page)."""
    h = heading
    parts = [f"<{h}>Summary</{h}>", table(["figure", "value"], summary_rows(data))]
    if data.get("training"):
        parts.append(training_section(data["training"], images, heading=h))
    parts += [f"<{h}>Per class</{h}>",
              '<p class="note">precision = right among those predicted as the class; recall = found among the '
              "class's images; F1 = their harmonic mean. Same numbers as scikit-learn's classification_report."
              "</p>",
              table(["class", "precision", "recall", "f1-score", "support"], classification_rows(data))]
    parts += [f"<{h}>Confusion matrix</{h}>", confusion_table(data)]
    if "confusion_png" in images:
        parts.append(data_uri_img(images["confusion_png"], "confusion matrix"))
    parts += [f"<{h}>Most confused pairs</{h}>",
              table(["true", "predicted as", "images", "share of the true class"], pairs_rows(data))
              if data["most_confused"] else "<p>No mistakes.</p>"]
    parts.append(f"<{h}>Most confident mistakes</{h}>")
    if "mistakes_png" in images:
        parts.append(data_uri_img(images["mistakes_png"], "most confident mistakes"))
    if "saliency_png" in images:
        parts.append("<p>The same mistakes with their input-gradient saliency over them: the pixels whose change "
                     "moves the predicted class's log-probability most (hot: most).</p>")
        parts.append(data_uri_img(images["saliency_png"], "saliency of the most confident mistakes"))
    kind = "decision value" if data["score_kind"] == "decision" else "confidence"
    parts.append(table(["image", "true", "predicted", kind, "probability of the true class"],
                       mistakes_rows(data)))
    cal = data.get("calibration")
    parts.append(f"<{h}>Calibration</{h}>")
    if cal:
        parts.append(f"<p>Expected calibration error: <b>{pct(cal['ece'])}</b> over {cal['bins']} equal-width "
                     "confidence bins (the image-weighted mean gap between confidence and accuracy).</p>")
        if "reliability_png" in images:
            parts.append(data_uri_img(images["reliability_png"], "reliability diagram"))
        parts.append(table(["confidence bin", "images", "accuracy", "mean confidence", "gap"],
                           calibration_rows(cal)))
    else:
        parts.append("<p>Not available: this model gives decision values, not probabilities.</p>")
    return "\n".join(parts)


def evaluation_html(data: Mapping[str, Any], *, images: Mapping[str, bytes]) -> str:
    """The full report page of one evaluation."""
    title = f"{data['model']} on {data['dataset']} {data['split']}"
    split_note = (f"{data['split']} split: {data['count']:,} images"
                  + (" held out of the training split, rebuilt from the run's config" if data["split"] == "val"
                     else ""))
    head = (f"<h1>{esc(title)}</h1>\n<p class=\"meta\">run <code>{esc(data['run_dir'])}</code> · {esc(split_note)}"
            f" · weights sha256 {esc(data['weights_sha256'][:12])}…</p>")
    return page(f"mnistlab: {title}", head + "\n" + evaluation_body(data, images))


# ------------------------------------------------------------------------------------------ comparison
def compare_html(*, columns: Sequence[Mapping[str, Any]], table_rows: Sequence[Sequence[str]],
                 curves_png: bytes | None, per_class: Sequence[Sequence[str]] | None,
                 sections: Sequence[tuple[str, Mapping[str, Any] | None, Mapping[str, bytes], str]]) -> str:
    """The comparison page: the side-by-side table, overlaid curves, per-class F1, then each run's failures.

    ``sections``: (heading, evaluation dict or None, its images, a note when there is no evaluation).
    """
    labels = [str(column["label"]) for column in columns]
    parts = [f"<h1>Comparison of {len(columns)} runs</h1>",
             '<p class="meta">' + " · ".join(esc(label) for label in labels) + "</p>",
             "<h2>Side by side</h2>", table(["", *labels], table_rows)]
    if curves_png:
        parts += ["<h2>Training curves</h2>", data_uri_img(curves_png, "training curves, overlaid")]
    if per_class:
        # Shade each run's weakest class: where it errs most.
        lowest = []
        for column in range(1, len(per_class[0])):
            values = [float(row[column]) for row in per_class if row[column]]
            lowest.append(min(values) if values else None)
        body = "".join("<tr>" + f"<td>{esc(row[0])}</td>" + "".join(
            f'<td class="{"bad" if cell and float(cell) == lowest[i] else ""}">{esc(cell)}</td>'
            for i, cell in enumerate(row[1:])) + "</tr>" for row in per_class)
        head = "".join(f"<th>{esc(h)}</th>" for h in ["class", *labels])
        parts += ["<h2>F1 per class on the test set</h2>",
                  '<p class="note">Where each run fails: the shaded cell is each run\'s weakest class.</p>',
                  f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"]
    parts.append("<h2>Where each run fails</h2>")
    for heading, data, images, note in sections:
        parts.append(f"<h3>{esc(heading)}</h3>")
        if data is None:
            parts.append(f'<p class="missing">{esc(note)}</p>')
            continue
        parts.append('<div class="cols"><div>')
        parts.append(table(["figure", "value"], summary_rows(data)))
        parts.append("</div><div>")
        parts.append(table(["true", "predicted as", "images", "share of the true class"], pairs_rows(data)))
        parts.append("</div></div>")
        if "confusion_png" in images:
            parts.append(data_uri_img(images["confusion_png"], f"{heading}: confusion matrix"))
        if "mistakes_png" in images:
            parts.append(data_uri_img(images["mistakes_png"], f"{heading}: most confident mistakes"))
    return page("mnistlab: run comparison", "\n".join(parts))
