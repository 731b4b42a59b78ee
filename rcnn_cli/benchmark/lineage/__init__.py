"""The lineage table (``benchmarks/lineage.py``): its systems and budgets (``systems``), each run
trained, reused or continued, timed and kept (``runs``), the per-image test time split as in
Faster R-CNN's Table 5 (``timing``), the papers' claims checked on the results (``claims``), the
tables, report and plot (``report``) and the runs trained side by side in child processes
(``jobs``)."""
