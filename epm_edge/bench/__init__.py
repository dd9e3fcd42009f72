"""`epm-edge bench`: accuracy, speed, memory and cost of every exported variant on labelled pairs.

Data flow: `variants` finds what an export dir holds; `run` starts one `worker` subprocess per
variant (so load time and peak RSS belong to that variant alone), turns the raw scores and
timings into figures (`figures`), and `report` writes report.md, report.json and the plots.
"""
