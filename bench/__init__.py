"""jobd's benchmark suite: `python -m bench [--quick] [--only SCENARIO ...] [--repeat N]`.

Each scenario starts a real `jobd serve` process (release settings: JSON logs to a file, SQLite on
disk in a temporary folder) and drives it from this process, the load generator, over loopback;
scenarios that need thousands of streams add stream-holding processes (`bench.holder`). The
results are printed as one table and written to bench/results/results.json.

Modules: `daemon` (the jobd process under test), `sse` (a light SSE reader), `holder` (many idle
streams in a child process), `history` (a generated store of 1M runs), `scenarios` (the six
scenarios of the issue), `report` (figures, the table, the JSON), `machine` (the header).
"""
