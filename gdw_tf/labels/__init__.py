"""Wrong labels: ranking the training labels (`label_issues`) and counting them with the trusted
set (`wrong_count`). The pages that show them are `gdw_tf.pages`. Imports from the layers before
it (backend, core, nets, data) only.
"""
