"""`report.html`: one self-contained page per run, to look at the run and its suspicious labels.

Sections: the run in numbers; accuracy per epoch (`history.csv`); the estimated noise rate per
class and the estimated transition matrix (given label against suggested label, from the label
issues; beside the true ones when the run's noise was injected and is known); each example's
weight against its loss; a gallery of the most suspicious examples (thumbnails of images, rows
of feature values otherwise) with given and suggested labels; and the list of flagged examples.

Charts are inline SVG (`gdw_tf.pages.charts`) and thumbnails inline PNG
(`gdw_tf.pages.images`), so the file can be mailed or opened anywhere without its run
directory. The page's HTML and CSS are `templates/report.html` and `templates/report.css`.
"""

import html
from collections.abc import Sequence

import numpy as np

from gdw_tf.labels.label_issues import LabelIssues
from gdw_tf.pages import charts
from gdw_tf.pages import files
from gdw_tf.pages import images as images_lib

GALLERY_SIZE = 60  # examples in the gallery
FLAGGED_LIST_LIMIT = 2000  # rows of the list of flagged examples (all are in label_issues.csv)


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
    return files.fill(
        "report.html",
        title=html.escape(f"gdw_tf report: {title}"),
        style=files.read("report.css"),
        body="\n".join(sections),
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
            "The model learned wrong labels, so its own probabilities back them: a probe fitted "
            "on the trusted set turns the model's outputs into probabilities p of the true "
            "class. The <b>score</b> of an example is p(given) − max<sub>other</sub> p under "
            "that probe (lower = more suspicious). The number of wrong labels of each given "
            "label was estimated with the trusted set (Gold Loss Correction's estimate of the "
            "noise, Hendrycks et al. 2018; the interval: bootstrap of the trusted set), and that "
            "many of its lowest scores are <b>flagged</b>. The <b>suggested</b> label of a "
            "flagged example is its likeliest class other than the given one; of the others, "
            "the likeliest class. The estimate rests on "
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
        ("test/accuracy", "test accuracy", charts.BLUE),
        ("train/accuracy", "training accuracy on the given labels", charts.GREY),
    ):
        values = [row.get(key) for row in history]
        if all(v is not None for v in values):
            series.append((label, colour, values))
    if not series:
        return "<p>No accuracy in history.csv.</p>"
    return charts.line_chart(
        epochs, series, x_label="epoch", y_label="accuracy", y_range=(0.0, 1.0)
    )


def _noise_section(issues, names, truth):
    c = issues.num_classes
    given, suggested = issues.given_label, issues.suggested_label
    counts = np.bincount(given, minlength=c)
    flagged_share = np.bincount(given[issues.flagged], minlength=c) / np.maximum(counts, 1)
    estimate = issues.estimate
    if estimate is not None and estimate.trusted_source == "auto":
        estimate = None  # It undercounts (rests_on): shown in the summary only.
    cut = estimate is not None and estimate.flags_cut_at_estimate
    bars = (
        []
        if cut
        else [("flagged" if estimate else "estimated (flagged)", charts.RED, flagged_share)]
    )
    if estimate is not None:
        estimated_share = np.asarray(estimate.per_given_label) / np.maximum(counts, 1)
        bars.append(
            (
                "estimated with the trusted set",
                charts.BLUE if not cut else charts.RED,
                estimated_share,
            )
        )
    if truth is not None:
        wrong = truth["corrupted"]
        bars.append(
            (
                "true (injected noise)",
                charts.GREY,
                np.bincount(given[wrong], minlength=c) / np.maximum(counts, 1),
            )
        )
    chart = charts.bar_chart(names, bars, "share of the label that is wrong", width=720)
    # Transition matrix: rows the suggested (estimated true) class, columns the given label.
    joint = np.zeros((c, c))
    np.add.at(joint, (suggested, given), 1)
    matrix = charts.matrix_table(
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
            charts.matrix_table(
                np.asarray(estimate.transition_matrix),
                names,
                "true class ↓ / given label → (estimated with the trusted set)",
            )
            + matrix
        )
    if truth is not None:
        true_joint = np.zeros((c, c))
        np.add.at(true_joint, (truth["true_label"], given), 1)
        matrix += charts.matrix_table(
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
                charts.histogram_2d(
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
        f"colour is the share flagged, from <span style='color:{charts.BLUE}'>none</span> to "
        f"<span style='color:{charts.RED}'>all</span>. Weights are those of the last epoch; the "
        "loss is the trained model's. <b>Read with care:</b> a low weight marks a label the "
        "model rejected; a wrong label the model learned (an annotator's mistake on an "
        "ambiguous example) gets an ordinary weight. On the instance-dependent benchmark of "
        "<code>docs/LABEL_ISSUES.md</code> the weight on the given label ranked wrong labels "
        "no better than chance; the flags do not use the weights.</p>"
    )
    return note + "<div class='row'>" + "".join(panels) + "</div>"


def _gallery(issues, names, images):
    count = min(GALLERY_SIZE, len(issues))
    if images is not None and images_lib.is_image_array(images):
        cards = []
        for i in range(count):
            thumbnail = images_lib.png_data_uri(images_lib.thumbnail(images[issues.position[i]]))
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


def _format_value(value):
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return html.escape(str(value))


def _section(title, body):
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"
