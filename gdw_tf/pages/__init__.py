"""The run's pages: `report.html` (`report`, its SVG charts in `charts`) and `review.html`
(`review`). Their HTML, CSS and JavaScript are files of the package (`templates/`, read and
filled in by `files`); the numbers they show come from `gdw_tf.labels`. Imports from the layers
before it (backend, core, nets, data, labels) only.
"""
