"""How each model of the zoo is searched: the strategy by size, the CV search, the time budget, the threads.

`strategies` picks exact, halving, subsample-then-refit or approximated search from the row count;
`selection` runs it; `budget` cuts searches to fit `--time-budget`; `threads` keeps workers x BLAS
threads within the cores.
"""
