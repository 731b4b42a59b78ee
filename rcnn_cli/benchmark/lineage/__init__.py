"""The lineage table (``benchmarks/lineage.py``): its systems and budgets (``systems``), the
per-image test time split as in Faster R-CNN's Table 5 (``timing``), the papers' claims checked
on the results (``claims``) and the tables, report and plot (``report``)."""
