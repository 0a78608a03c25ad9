"""Reports from the results database: accuracy-vs-BER plots, margin histograms, summary
tables with intervals across training seeds, as Markdown and a self-contained HTML page.

>>> from mcel.report import build_report  # build_report("study.db", "report/")
"""

from mcel.report.build import build_report, load_results

__all__ = ["build_report", "load_results"]
