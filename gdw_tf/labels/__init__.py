"""Wrong labels: ranking the training labels (`label_issues`), counting them with the trusted set
(`wrong_count`), the run's `report.html` and `review.html`. Imports from the layers before it
(backend, core, nets, data) only.
"""
