"""Jobs run by ``rr``: build, train, evaluate, tune fusion, the demo, document files (never imported by the API)."""
