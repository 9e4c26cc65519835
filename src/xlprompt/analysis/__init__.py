"""Analysis of a results store: the studies' tables and figures, language distances, representation
alignment, and the HTML report. Reads stores and run folders; never trains (no import of xlprompt.training.fit)."""
