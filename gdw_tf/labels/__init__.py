"""Wrong labels: ranking the training labels (`label_issues`) and the run's `report.html`."""
