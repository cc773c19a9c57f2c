"""The report's charts: inline SVG (and an HTML table for a matrix), written by hand so that a
page needs no plotting library and no network."""

import html
import math

import numpy as np

BLUE, RED, GREY = "#3465a4", "#cc0000", "#888a85"


def line_chart(xs, series, *, x_label, y_label, y_range, width=560, height=280):
    """An SVG chart of lines over `xs`, one per `(label, colour, values)` of `series`, each
    labelled at its end with its last value; `y_range`: `(low, high)` of the y axis."""
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


def bar_chart(names, bars, y_label, width=560, height=280):
    """An SVG chart of grouped bars: per name, one bar of each `(label, colour, shares)` of
    `bars` (`shares` in [0, 1], one per name), with a legend; the y axis in percent."""
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


def histogram_2d(x, y, flagged, *, x_label, y_label, bins=40, width=420, height=330):
    """An SVG 2-D histogram of `(x, y)` in `bins × bins` cells: opacity the count (log scale),
    colour the share `flagged`, from `BLUE` (none) to `RED` (all); x up to its 99.5% quantile."""
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
        colour = mix(BLUE, RED, share)
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


def matrix_table(matrix, names, caption):
    """An HTML table of a `[C, C]` matrix of shares, in percent, rows and columns named by
    `names`; cells shaded towards `BLUE` on the diagonal and `RED` off it."""
    c = len(names)
    header = "".join(
        f"<th title='{html.escape(str(n))}'>{html.escape(_short(n, 6))}</th>" for n in names
    )
    rows = []
    for i in range(c):
        cells = "".join(
            f"<td style='background:{mix('#ffffff', RED if i != j else BLUE, matrix[i, j])};"
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


def mix(a, b, t):
    """The colour `t` of the way from `a` to `b` (hex strings)."""
    t = float(min(max(t, 0.0), 1.0))
    ca = [int(a[i : i + 2], 16) for i in (1, 3, 5)]
    cb = [int(b[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(u + (v - u) * t):02x}" for u, v in zip(ca, cb))


def _short(name, length=12):
    """`name` cut to `length` characters, its last an ellipsis."""
    name = str(name)
    return name if len(name) <= length else name[: length - 1] + "…"
