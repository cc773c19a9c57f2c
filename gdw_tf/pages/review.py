"""`review.html`: one self-contained page per run to review labels by keyboard.

The page walks the examples to review, up to `REVIEW_LIMIT` of them, in the order of
`label_issues.csv`'s `review_rank` (`label_issues.review_order`): second looks at reviewed
labels that this run contradicts, the trusted examples that the data around them contradicts,
then training examples spread evenly over the suggested classes, representative ones first (each
reviewed example joins the trusted set of the next run). For each: the image (or the row of
feature values), which set it is in, the given (or trusted) and the suggested label and the
evidence's first classes (the model's probabilities; for a trusted example, the shares of its
nearest training examples' labels). One key each:

    k / Enter   keep the given label         a   take the suggested label
    0-9         that class (with more than 10 classes: type its number, Enter if it could go on)
    r           remove: no class fits, leave the example out of the next run
    s / →       skip                         b / ← / Backspace   back

Decisions are kept in the browser's `localStorage` under a key of the run (its directory's name
and a fingerprint of the examples), so closing and reopening the page loses nothing; the
button "Download corrections.csv" (or `d`) saves them: `id, given_label, reviewed_label,
decision, suggested_label, rank, score, given_class, reviewed_class, set`, which
`python -m gdw_tf.train ... --corrections=corrections.csv` reads (`gdw_tf.data.corrections`).

Everything the page shows comes from one JSON block; labels, class names and ids are user data,
inserted as text only (never as HTML), and the JSON cannot close its `<script>` element.
Images are inline PNG (`gdw_tf.pages.images.png_data_uri`); no network, no server. The page's
HTML, CSS and JavaScript are `templates/review.html`, `review.css` and `review.js`.
"""

import hashlib
import html
import json
import math

import numpy as np

from gdw_tf.labels import label_issues
from gdw_tf.pages import files
from gdw_tf.pages import images as images_lib

REVIEW_LIMIT = 2000  # examples on the page, in the order of review
IMAGE_BUDGET = 40_000_000  # bytes of inline images at most; examples beyond are left out
_IMAGE_PIXELS = 160  # longest side of an image on the page (larger ones are subsampled)
_FEATURES_SHOWN = 64  # values of a feature row shown


def render_review(issues, *, run_name="run", images=None, trusted_images=None, limit=REVIEW_LIMIT):
    """The review page of a run, as a string (`gdw_tf.runs.run_dir.write_review` writes a run's).

    Args:
      issues: the run's `gdw_tf.labels.label_issues.LabelIssues` (with `top_classes`).
      run_name: titles the page and keys the decisions stored in the browser.
      images: optional training inputs in the order the issues were computed from
        (`issues.position` indexes them): uint8 images `[N, H, W, C]` are shown as images,
        anything else `[N, ...]` as rows of values.
      trusted_images: the trusted examples' inputs likewise (`issues.trusted.position`).
      limit: at most this many examples, in the order of review.
    """
    data = review_data(
        issues, images=images, trusted_images=trusted_images, run_name=run_name, limit=limit
    )
    payload = (
        json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    return files.fill(
        "review.html",
        title=html.escape(f"gdw_tf review: {run_name}"),
        style=files.read("review.css"),
        script=files.read("review.js"),
        data=payload,
    )


def review_data(issues, *, images=None, trusted_images=None, run_name="run", limit=REVIEW_LIMIT):
    """The page's JSON: the run, the classes and the examples to review (in
    `gdw_tf.labels.label_issues.review_order`).

    Each item: `set` (`training` or `trusted`), `rank` (within its set), `id` (text), `given`,
    `suggested`, `score`, `reviewed` (an earlier review gave the label), `top` (pairs of class
    and probability, or share of neighbours for a trusted example), and `image` (a PNG data
    URI) or `row` (feature values).
    """
    names = (
        [str(name) for name in issues.class_names]
        if issues.class_names is not None
        else [str(k) for k in range(issues.num_classes)]
    )
    in_trusted, positions = label_issues.review_order(issues)
    checks = issues.trusted
    is_image = images is not None and images_lib.is_image_array(images)
    items, image_bytes = [], 0
    for trusted, i in zip(in_trusted[:limit], positions[:limit]):
        if trusted:
            item = {
                "set": label_issues.TRUSTED,
                "rank": int(checks.rank[i]),
                "id": _text(checks.id[i]),
                "given": int(checks.label[i]),
                "suggested": int(checks.suggested_label[i]),
                "score": round(float(checks.score[i]), 4),
                "reviewed": bool(checks.reviewed[i]),
                "top": [
                    [int(k), round(float(p), 4)]
                    for k, p in zip(checks.top_classes[i], checks.top_shares[i])
                ],
            }
            source, position = trusted_images, checks.position[i]
        else:
            item = {
                "set": label_issues.TRAINING,
                "rank": int(issues.rank[i]),
                "id": _text(issues.id[i]),
                "given": int(issues.given_label[i]),
                "suggested": int(issues.suggested_label[i]),
                "score": round(float(issues.score[i]), 4),
                "reviewed": bool(issues.reviewed is not None and issues.reviewed[i]),
                "top": _top(issues, i),
            }
            source, position = images, issues.position[i]
        if source is not None and is_image:
            uri = images_lib.png_data_uri(_shrink(source[position]))
            image_bytes += len(uri)
            if image_bytes > IMAGE_BUDGET:
                break
            item["image"] = uri
        elif source is not None:
            values = np.asarray(source[position]).reshape(-1)
            item["row"] = [_value(v) for v in values[:_FEATURES_SHOWN]]
            item["more"] = int(max(len(values) - _FEATURES_SHOWN, 0))
        items.append(item)
    fingerprint = hashlib.sha256(
        json.dumps([[it["set"], it["id"], it["given"], it["score"]] for it in items]).encode()
    ).hexdigest()[:16]
    return {
        "run": run_name,
        "key": f"gdw_tf.review/{run_name}/{fingerprint}",
        "classes": names,
        "num_examples": len(issues),
        "num_flagged": issues.num_flagged,
        "num_trusted": len(checks) if checks is not None else 0,
        "num_trusted_flagged": checks.num_flagged if checks is not None else 0,
        "trusted_evidence": checks.evidence if checks is not None else None,
        "items": items,
    }


def _top(issues, i):
    if issues.top_classes is None:
        pairs = [(issues.suggested_label[i], issues.suggested_probability[i])]
        if issues.given_label[i] != issues.suggested_label[i]:
            pairs.append((issues.given_label[i], issues.given_probability[i]))
    else:
        pairs = zip(issues.top_classes[i], issues.top_probabilities[i])
    return [[int(k), round(float(p), 4)] for k, p in pairs]


def _shrink(image):
    """A uint8 image subsampled to at most `_IMAGE_PIXELS` on its longest side."""
    image = np.asarray(image)
    step = math.ceil(max(image.shape[:2]) / _IMAGE_PIXELS)
    return image[::step, ::step] if step > 1 else image


def _value(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return float(f"{number:.4g}") if math.isfinite(number) else str(number)


def _text(value):
    return str(value.item() if hasattr(value, "item") else value)
