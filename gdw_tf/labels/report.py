"""`report.html`: one self-contained page per run, to look at the run and its suspicious labels.

Sections: the run in numbers; accuracy per epoch (`history.csv`); the estimated noise rate per
class and the estimated transition matrix (given label against suggested label, from the label
issues; beside the true ones when the run's noise was injected and is known); each example's
weight against its loss; a gallery of the most suspicious examples (thumbnails of images, rows
of feature values otherwise) with given and suggested labels; and the list of flagged examples.

Charts are inline SVG and thumbnails inline base64 PNG (written with `zlib`, no plotting
library), so the file can be mailed or opened anywhere without its run directory.
"""

import base64
import html
import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from gdw_tf.labels.label_issues import LabelIssues

GALLERY_SIZE = 60  # examples in the gallery
FLAGGED_LIST_LIMIT = 2000  # rows of the list of flagged examples (all are in label_issues.csv)
_THUMBNAIL_PIXELS = 84  # longest side of a thumbnail
_BLUE, _RED, _GREY = "#3465a4", "#cc0000", "#888a85"


def render_report(
    issues: LabelIssues,
    *,
    title: str = "",
    config: dict | None = None,
    history: Sequence[dict] = (),
    example_weights: dict | None = None,
    images: np.ndarray | None = None,
    review_page: str | None = None,
) -> str:
    """The HTML page of a run's report (a section without its data is left out).

    Args:
      issues: the run's `gdw_tf.labels.label_issues.LabelIssues`.
      title: the run's name, for the page title.
      config: the run's `config.json` content.
      history: the rows of `history.csv` as dicts of floats, one per epoch.
      example_weights: the arrays of `example_weights.npz`; with `true_label` and `corrupted`
        (injected noise), the report compares the flags with the truth.
      images: optional training inputs in the order the issues were computed from
        (`issues.position` indexes them): uint8 images `[N, H, W, C]` become thumbnails,
        anything else `[N, ...]` rows of values.
      review_page: the file name of the run's review page beside this one, linked from the
        summary; None for no link.

    Returns:
      The page, as a string (`gdw_tf.runs.run_dir.write_report` writes a run's).
    """
    config = config or {}
    truth = _truth(example_weights, issues)
    names = _class_names(issues)
    run_config = config.get("config", {})
    sections = [
        _summary(run_config, config, history, issues, truth, review_page),
        _section("Accuracy per epoch", _accuracy_chart(history)) if history else "",
        _section("Estimated label noise", _noise_section(issues, names, truth)),
        _section("Weight against loss", _weight_loss_section(issues)),
        _section(
            f"The {min(GALLERY_SIZE, len(issues))} most suspicious labels",
            _gallery(issues, names, images),
        ),
        _section(f"Flagged examples ({issues.num_flagged:,})", _flagged_list(issues, names)),
    ]
    return _PAGE.format(
        title=html.escape(f"gdw_tf report: {title}"), style=_STYLE, body="\n".join(sections)
    )


# --------------------------------------------------------------------------------------------
# Sections


def _summary(run_config, config, history, issues, truth, review_page=None):
    n, flagged = len(issues), issues.num_flagged
    items = [
        ("training examples", f"{n:,}"),
        ("flagged as wrong", f"{flagged:,} ({flagged / max(n, 1):.1%})"),
    ]
    estimate = issues.estimate
    if estimate is not None:
        low, high = estimate.interval or (estimate.count, estimate.count)
        items.append(
            (
                "estimated wrong labels (trusted set; 95% interval)",
                f"{estimate.count:,.0f} ({low:,.0f}–{high:,.0f})",
            )
        )
    if history and "test/accuracy" in history[-1]:
        items.append(("test accuracy (last epoch)", f"{history[-1]['test/accuracy']:.2%}"))
    protocol_keys = ("dataset", "noise", "ratio", "imbalance")  # Not used by own data.
    for key in ("dataset", "method", "model", "noise", "ratio", "imbalance", "epochs"):
        if key in run_config and not (run_config.get("train_data") and key in protocol_keys):
            items.append((key, str(run_config[key])))
    if truth is not None:
        wrong = truth["corrupted"]
        hit = int((issues.flagged & wrong).sum())
        precision, recall = hit / max(flagged, 1), hit / max(int(wrong.sum()), 1)
        items.append(
            (
                "truly wrong (injected noise, known here)",
                f"{int(wrong.sum()):,} ({wrong.mean():.1%})",
            )
        )
        items.append(("flags: precision / recall", f"{precision:.3f} / {recall:.3f}"))
    cells = "".join(
        f"<div class='stat'><div class='value'>{html.escape(value)}</div>"
        f"<div class='key'>{html.escape(key)}</div></div>"
        for key, value in items
    )
    rule = (
        "An example is <b>flagged</b> when the trained model prefers another class to its "
        "given label: its score p(given) − max<sub>other</sub> p is negative (lower = more "
        "suspicious); the <b>suggested</b> label is the model's most probable class. The "
        "full ranked table is <code>label_issues.csv</code>."
    )
    if estimate is not None and estimate.flags_cut_at_estimate:
        rule = (
            "The <b>score</b> of an example is p(given) − max<sub>other</sub> p under the "
            "trained model (lower = more suspicious); the <b>suggested</b> label is the model's "
            "most probable class. The number of wrong labels of each given label was estimated "
            "with the trusted set (Gold Loss Correction's estimate of the noise, Hendrycks et "
            "al. 2018; the interval: bootstrap of the trusted set), and that many of its lowest "
            "scores are <b>flagged</b>, so a flagged example may keep its given label as the "
            "suggestion (a wrong label the model learned). The estimate rests on "
            f"{html.escape(estimate.rests_on())}. The full ranked table is "
            "<code>label_issues.csv</code>."
        )
    elif estimate is not None:
        why = (
            "the model rejected the wrong labels, and its rejections need no count (a cut at "
            "the count did no better on the benchmark of docs/LABEL_ISSUES.md). It "
            "rests on "
            if not estimate.model_learned_wrong_labels and estimate.trusted_source != "auto"
            else "it rests on "
        )
        rule += (
            " The number of wrong labels was also estimated with the trusted set (Gold Loss "
            "Correction's estimate, Hendrycks et al. 2018), but not used to flag: "
            f"{why}{html.escape(estimate.rests_on())}."
        )
    if review_page:
        link = html.escape(review_page, quote=True)
        rule += (
            f" To check the flagged labels one by one and fix them, open <a href='{link}'>"
            f"{html.escape(review_page)}</a>, beside this page."
        )
    return f"<section><div class='stats'>{cells}</div><p class='note'>{rule}</p></section>"


def _accuracy_chart(history):
    epochs = [row.get("epoch", i) + 1 for i, row in enumerate(history)]
    series = []
    for key, label, colour in (
        ("test/accuracy", "test accuracy", _BLUE),
        ("train/accuracy", "training accuracy on the given labels", _GREY),
    ):
        values = [row.get(key) for row in history]
        if all(v is not None for v in values):
            series.append((label, colour, values))
    if not series:
        return "<p>No accuracy in history.csv.</p>"
    return _line_chart(epochs, series, x_label="epoch", y_label="accuracy", y_range=(0.0, 1.0))


def _noise_section(issues, names, truth):
    c = issues.num_classes
    given, suggested = issues.given_label, issues.suggested_label
    counts = np.bincount(given, minlength=c)
    flagged_share = np.bincount(given[issues.flagged], minlength=c) / np.maximum(counts, 1)
    estimate = issues.estimate
    if estimate is not None and estimate.trusted_source == "auto":
        estimate = None  # It undercounts (rests_on): shown in the summary only.
    cut = estimate is not None and estimate.flags_cut_at_estimate
    bars = [] if cut else [("flagged" if estimate else "estimated (flagged)", _RED, flagged_share)]
    if estimate is not None:
        estimated_share = np.asarray(estimate.per_given_label) / np.maximum(counts, 1)
        bars.append(("estimated with the trusted set", _BLUE if not cut else _RED, estimated_share))
    if truth is not None:
        wrong = truth["corrupted"]
        bars.append(
            (
                "true (injected noise)",
                _GREY,
                np.bincount(given[wrong], minlength=c) / np.maximum(counts, 1),
            )
        )
    chart = _bar_chart(names, bars, "share of the label that is wrong", width=720)
    # Transition matrix: rows the suggested (estimated true) class, columns the given label.
    joint = np.zeros((c, c))
    np.add.at(joint, (suggested, given), 1)
    matrix = _matrix_table(
        joint / np.maximum(joint.sum(axis=1, keepdims=True), 1),
        names,
        "suggested (estimated true) class ↓ / given label →",
    )
    text = (
        "<p class='note'>Above: the share of each given label that is flagged. Below: the "
        "estimated transition matrix, P(given label | suggested class), each row a "
        "suggested class (the diagonal keeps its label).</p>"
    )
    if estimate is not None:
        above = (
            "the estimated share of each given label that is wrong (the trusted set's estimate)"
            if cut
            else "the share of each given label that is flagged, and the share the trusted "
            "set estimates is wrong"
        )
        text = (
            f"<p class='note'>Above: {above}. Below: the transition matrix estimated on the "
            "trusted set, P(given label | true class), each row a true class; then the "
            "share of each suggested class given each label.</p>"
        )
        matrix = (
            _matrix_table(
                np.asarray(estimate.transition_matrix),
                names,
                "true class ↓ / given label → (estimated with the trusted set)",
            )
            + matrix
        )
    if truth is not None:
        true_joint = np.zeros((c, c))
        np.add.at(true_joint, (truth["true_label"], given), 1)
        matrix += _matrix_table(
            true_joint / np.maximum(true_joint.sum(axis=1, keepdims=True), 1),
            names,
            "true class ↓ / given label → (known here)",
        )
    return f"{text}{chart}<div class='row'>{matrix}</div>"


def _weight_loss_section(issues):
    loss = -np.log(np.clip(issues.given_probability, 1e-12, 1.0))
    panels = []
    for values, label in (
        (issues.instance_weight, "instance weight"),
        (issues.labelled_class_weight, "weight on the given label (GDW: ω¹)"),
    ):
        if np.all(np.isfinite(values)) and len(values) and np.ptp(values) > 0:
            panels.append(
                _histogram_2d(
                    loss, values, issues.flagged, x_label="loss −log p(given label)", y_label=label
                )
            )
    if not panels:
        return (
            "<p>No recorded weights to plot (the model tracked no examples, or all weights "
            "are equal, as with plain cross-entropy).</p>"
        )
    note = (
        "<p class='note'>Each cell counts examples (darker = more, on a log scale); its "
        f"colour is the share flagged, from <span style='color:{_BLUE}'>none</span> to "
        f"<span style='color:{_RED}'>all</span>. Weights are those of the last epoch; the "
        "loss is the trained model's. <b>Read with care:</b> a low weight marks a label the "
        "model rejected; a wrong label the model learned (an annotator's mistake on an "
        "ambiguous example) gets an ordinary weight. On the instance-dependent benchmark of "
        "<code>docs/LABEL_ISSUES.md</code> the weight on the given label ranked wrong labels "
        "no better than chance; the flags do not use the weights.</p>"
    )
    return note + "<div class='row'>" + "".join(panels) + "</div>"


def _gallery(issues, names, images):
    count = min(GALLERY_SIZE, len(issues))
    if images is not None and _is_image_array(images):
        cards = []
        for i in range(count):
            thumbnail = png_data_uri(_thumbnail(images[issues.position[i]]))
            cards.append(
                f"<figure class='card'><img src='{thumbnail}' alt='example {_id(issues, i)}'>"
                f"<figcaption><b>#{i + 1}</b> id {_id(issues, i)}<br>"
                f"given <span class='given'>{_name(names, issues.given_label[i])}</span><br>"
                f"suggested <span class='suggested'>{_name(names, issues.suggested_label[i])}"
                f"</span><br><small>score {issues.score[i]:+.3f}</small></figcaption></figure>"
            )
        return "<div class='gallery'>" + "".join(cards) + "</div>"
    header = "<tr><th>rank</th><th>id</th><th>given</th><th>suggested</th><th>score</th>"
    width = 0
    if images is not None:
        features = np.asarray(images).reshape(len(images), -1)
        width = min(features.shape[1], 8)
        header += "".join(f"<th>x{j}</th>" for j in range(width))
        if features.shape[1] > width:
            header += "<th>…</th>"
    rows = []
    for i in range(count):
        cells = (
            f"<td>{i + 1}</td><td>{_id(issues, i)}</td>"
            f"<td class='given'>{_name(names, issues.given_label[i])}</td>"
            f"<td class='suggested'>{_name(names, issues.suggested_label[i])}</td>"
            f"<td>{issues.score[i]:+.3f}</td>"
        )
        if width:
            values = features[issues.position[i]]
            cells += "".join(f"<td>{_format_value(v)}</td>" for v in values[:width])
            if len(values) > width:
                cells += "<td>…</td>"
        rows.append(f"<tr>{cells}</tr>")
    return f"<table class='list'>{header}</tr>{''.join(rows)}</table>"


def _flagged_list(issues, names):
    flagged = np.flatnonzero(issues.flagged)
    if not len(flagged):
        return "<p>No example is flagged: the model agrees with every given label.</p>"
    shown = flagged[:FLAGGED_LIST_LIMIT]
    rows = "".join(
        f"<tr class='flagged'><td>{i + 1}</td><td class='id'>{_id(issues, i)}</td>"
        f"<td>{_name(names, issues.given_label[i])}</td>"
        f"<td>{_name(names, issues.suggested_label[i])}</td><td>{issues.score[i]:+.3f}</td></tr>"
        for i in shown
    )
    more = (
        f"<p class='note'>The first {len(shown):,} of {len(flagged):,}; all are in "
        "<code>label_issues.csv</code>.</p>"
        if len(shown) < len(flagged)
        else ""
    )
    return (
        f"<details{' open' if len(flagged) <= 100 else ''}><summary>show the list"
        f"</summary>{more}<table class='list' id='flagged'><tr><th>rank</th><th>id</th>"
        f"<th>given</th><th>suggested</th><th>score</th></tr>{rows}</table></details>"
    )


# --------------------------------------------------------------------------------------------
# Charts (SVG)


def _line_chart(xs, series, *, x_label, y_label, y_range, width=560, height=280):
    left, right, top, bottom = 50, 16, 12, 40
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = y_range

    def px(x):
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def py(y):
        return top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom)

    parts = [
        _axes(
            width,
            height,
            left=left,
            right=right,
            top=top,
            bottom=bottom,
            x_label=x_label,
            y_label=y_label,
        )
    ]
    for tick in np.linspace(y0, y1, 6):
        parts.append(
            f"<line x1='{left}' x2='{width - right}' y1='{py(tick):.1f}' "
            f"y2='{py(tick):.1f}' class='grid'/><text x='{left - 6}' "
            f"y='{py(tick) + 4:.1f}' text-anchor='end'>{tick:.1f}</text>"
        )
    for x in _ticks(x0, x1):
        parts.append(
            f"<text x='{px(x):.1f}' y='{height - bottom + 16}' text-anchor='middle'>{x:g}</text>"
        )
    highest = max(range(len(series)), key=lambda i: series[i][2][-1])
    for number, (label, colour, values) in enumerate(series):
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, values))
        parts.append(
            f"<polyline points='{points}' fill='none' stroke='{colour}' stroke-width='2'/>"
        )
        parts += [
            f"<circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='2.5' fill='{colour}'/>"
            for x, y in zip(xs, values)
        ]
        # The label of the series that ends highest above its line, the others below theirs.
        label_y = py(values[-1]) + (-8 if number == highest else 14)
        parts.append(
            f"<text x='{width - right - 4}' y='{label_y:.1f}' text-anchor='end' "
            f"fill='{colour}'>{html.escape(label)} {values[-1]:.3f}</text>"
        )
    return _svg(width, height, parts)


def _bar_chart(names, bars, y_label, width=560, height=280):
    left, right, top, bottom = 50, 16, 28, 56
    c = len(names)
    top_value = max(0.05, max(float(np.max(values)) for _, _, values in bars))
    top_value = math.ceil(top_value * 10) / 10

    def py(y):
        return top + (1 - y / top_value) * (height - top - bottom)

    slot = (width - left - right) / c
    bar = slot * 0.8 / len(bars)
    parts = [
        _axes(
            width,
            height,
            left=left,
            right=right,
            top=top,
            bottom=bottom,
            x_label="",
            y_label=y_label,
        )
    ]
    for tick in np.linspace(0, top_value, 6):
        parts.append(
            f"<line x1='{left}' x2='{width - right}' y1='{py(tick):.1f}' "
            f"y2='{py(tick):.1f}' class='grid'/><text x='{left - 6}' "
            f"y='{py(tick) + 4:.1f}' text-anchor='end'>{tick:.0%}</text>"
        )
    for k in range(c):
        for j, (_, colour, values) in enumerate(bars):
            x = left + k * slot + slot * 0.1 + j * bar
            parts.append(
                f"<rect x='{x:.1f}' y='{py(values[k]):.1f}' width='{bar:.1f}' "
                f"height='{py(0) - py(values[k]):.1f}' fill='{colour}'>"
                f"<title>{html.escape(str(names[k]))}: {values[k]:.1%}</title></rect>"
            )
        label = html.escape(_short(names[k]))
        cx, cy = left + (k + 0.5) * slot, height - bottom + 12
        parts.append(
            f"<text x='{cx:.1f}' y='{cy}' text-anchor='end' "
            f"transform='rotate(-35 {cx:.1f} {cy})'>{label}</text>"
        )
    for j, (label, colour, _) in enumerate(bars):
        parts.append(
            f"<rect x='{left + 8 + j * 190}' y='6' width='12' height='12' "
            f"fill='{colour}'/><text x='{left + 24 + j * 190}' y='16'>"
            f"{html.escape(label)}</text>"
        )
    return _svg(width, height, parts)


def _histogram_2d(x, y, flagged, *, x_label, y_label, bins=40, width=420, height=330):
    left, right, top, bottom = 50, 12, 12, 40
    x_max = max(float(np.quantile(x, 0.995)), 1e-3)
    y_min, y_max = float(np.min(y)), float(np.max(y))
    y_max = y_max if y_max > y_min else y_min + 1
    xi = np.clip((x / x_max * bins).astype(int), 0, bins - 1)
    yi = np.clip(((y - y_min) / (y_max - y_min) * bins).astype(int), 0, bins - 1)
    count = np.zeros((bins, bins))
    red = np.zeros((bins, bins))
    np.add.at(count, (xi, yi), 1)
    np.add.at(red, (xi, yi), flagged.astype(float))
    cell_w = (width - left - right) / bins
    cell_h = (height - top - bottom) / bins
    parts = [
        _axes(
            width,
            height,
            left=left,
            right=right,
            top=top,
            bottom=bottom,
            x_label=x_label,
            y_label=y_label,
        )
    ]
    scale = math.log1p(count.max())
    for i, j in zip(*np.nonzero(count)):
        share = red[i, j] / count[i, j]
        opacity = 0.15 + 0.85 * math.log1p(count[i, j]) / scale
        colour = _mix(_BLUE, _RED, share)
        parts.append(
            f"<rect x='{left + i * cell_w:.1f}' "
            f"y='{top + (bins - 1 - j) * cell_h:.1f}' width='{cell_w + 0.3:.1f}' "
            f"height='{cell_h + 0.3:.1f}' fill='{colour}' fill-opacity='{opacity:.2f}'>"
            f"<title>{int(count[i, j])} examples, {share:.0%} flagged</title></rect>"
        )
    for tick in np.linspace(0, x_max, 5):
        px = left + tick / x_max * (width - left - right)
        parts.append(
            f"<text x='{px:.1f}' y='{height - bottom + 16}' text-anchor='middle'>{tick:.1f}</text>"
        )
    for tick in np.linspace(y_min, y_max, 5):
        py = top + (1 - (tick - y_min) / (y_max - y_min)) * (height - top - bottom)
        parts.append(f"<text x='{left - 6}' y='{py + 4:.1f}' text-anchor='end'>{tick:.2f}</text>")
    return _svg(width, height, parts)


def _matrix_table(matrix, names, caption):
    c = len(names)
    header = "".join(
        f"<th title='{html.escape(str(n))}'>{html.escape(_short(n, 6))}</th>" for n in names
    )
    rows = []
    for i in range(c):
        cells = "".join(
            f"<td style='background:{_mix('#ffffff', _RED if i != j else _BLUE, matrix[i, j])};"
            f"color:{'#fff' if matrix[i, j] > 0.55 else '#000'}'>{matrix[i, j] * 100:.0f}</td>"
            for j in range(c)
        )
        rows.append(
            f"<tr><th title='{html.escape(str(names[i]))}'>"
            f"{html.escape(_short(names[i], 10))}</th>{cells}</tr>"
        )
    return (
        f"<table class='matrix'><caption>{html.escape(caption)} (%)</caption>"
        f"<tr><th></th>{header}</tr>{''.join(rows)}</table>"
    )


def _axes(width, height, *, left, right, top, bottom, x_label, y_label):
    return (
        f"<line x1='{left}' y1='{height - bottom}' x2='{width - right}' "
        f"y2='{height - bottom}' class='axis'/><line x1='{left}' y1='{top}' x2='{left}' "
        f"y2='{height - bottom}' class='axis'/><text x='{(left + width - right) / 2}' "
        f"y='{height - 6}' text-anchor='middle'>{html.escape(x_label)}</text>"
        f"<text x='12' y='{(top + height - bottom) / 2}' text-anchor='middle' "
        f"transform='rotate(-90 12 {(top + height - bottom) / 2})'>"
        f"{html.escape(y_label)}</text>"
    )


def _svg(width, height, parts):
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}'>{''.join(parts)}</svg>"
    )


def _ticks(x0, x1, most=10):
    step = max(1, math.ceil((x1 - x0) / most))
    return list(range(int(x0), int(x1) + 1, step))


def _mix(a, b, t):
    """The colour `t` of the way from `a` to `b` (hex strings)."""
    t = float(min(max(t, 0.0), 1.0))
    ca = [int(a[i : i + 2], 16) for i in (1, 3, 5)]
    cb = [int(b[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(u + (v - u) * t):02x}" for u, v in zip(ca, cb))


# --------------------------------------------------------------------------------------------
# Thumbnails (PNG)


def png_data_uri(image):
    """A uint8 image `[H, W]` or `[H, W, C]` as a `data:` URI of a PNG (the report's thumbnails, the
    review page's images)."""
    image = np.asarray(image)
    png = tf.io.encode_png(image[..., None] if image.ndim == 2 else image).numpy()
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _thumbnail(image):
    """A uint8 image scaled by an integer factor (nearest) to at most `_THUMBNAIL_PIXELS`, or
    subsampled to it."""
    image = np.asarray(image)
    longest = max(image.shape[:2])
    if longest <= _THUMBNAIL_PIXELS:
        factor = max(1, _THUMBNAIL_PIXELS // longest)
        return image.repeat(factor, axis=0).repeat(factor, axis=1)
    step = math.ceil(longest / _THUMBNAIL_PIXELS)
    return image[::step, ::step]


def _is_image_array(x):
    x = np.asarray(x) if not hasattr(x, "dtype") else x
    return x.dtype == np.uint8 and x.ndim == 4 and x.shape[-1] in (1, 3, 4)


# --------------------------------------------------------------------------------------------
# Reading the run directory, formatting


def _truth(example_weights, issues):
    """True labels and corruption flags in the issues' (ranked) order, if the run's noise was
    injected (some label corrupted) and `example_weights` match the issues; else None."""
    if example_weights is None or not {"corrupted", "true_label"} <= example_weights.keys():
        return None
    corrupted, true = example_weights["corrupted"], example_weights["true_label"]
    if len(corrupted) != len(issues) or not corrupted.any():
        return None
    return {
        "corrupted": corrupted[issues.position].astype(bool),
        "true_label": true[issues.position].astype(np.int64),
    }


def _class_names(issues):
    if issues.class_names is not None:
        return list(issues.class_names)
    return [str(k) for k in range(issues.num_classes)]


def _name(names, label):
    return html.escape(str(names[int(label)]))


def _id(issues, i):
    value = issues.id[i]
    return html.escape(str(value.item() if hasattr(value, "item") else value))


def _short(name, length=12):
    name = str(name)
    return name if len(name) <= length else name[: length - 1] + "…"


def _format_value(value):
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return html.escape(str(value))


def _section(title, body):
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 16px 24px; color: #222; }
h1 { font-size: 22px; margin: 4px 0 12px; } h2 { font-size: 17px; margin: 22px 0 8px;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.stats { display: flex; flex-wrap: wrap; gap: 10px; }
.stat { background: #f4f5f7; border-radius: 6px; padding: 8px 12px; min-width: 120px; }
.stat .value { font-size: 17px; font-weight: 600; } .stat .key { color: #666; font-size: 12px; }
.note { color: #555; font-size: 13px; max-width: 1000px; }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
svg text { font-size: 11px; fill: #333; } svg .axis { stroke: #444; } svg .grid { stroke: #eee; }
table.matrix { border-collapse: collapse; font-size: 11px; margin-top: 8px; }
table.matrix caption { font-size: 12px; color: #555; padding-bottom: 4px; }
table.matrix td { width: 30px; height: 22px; text-align: center; border: 1px solid #fff; }
table.matrix th { font-weight: normal; color: #555; padding: 2px 4px; text-align: right;
                  white-space: nowrap; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(120px, 1fr));
           gap: 10px; }
.card { margin: 0; background: #f8f8f8; border-radius: 6px; padding: 6px; text-align: center; }
.card img { image-rendering: pixelated; width: 84px; height: 84px; object-fit: contain; }
.card figcaption { font-size: 11px; line-height: 1.35; }
.given { color: #cc0000; font-weight: 600; } .suggested { color: #2c7a2c; font-weight: 600; }
table.list { border-collapse: collapse; font-size: 12px; }
table.list th, table.list td { border-bottom: 1px solid #eee; padding: 3px 10px;
                               text-align: left; }
summary { cursor: pointer; color: #3465a4; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{style}</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""
