"""The mask encoding shared by the dataset readers, the losses and the metrics. A leaf module: the losses and metrics
read it without importing the data package (which builds dataset cards from the metric definitions)."""

IGNORE_LABEL = 255  # multi-class masks: unlabelled pixels, left out of the loss and of every score
