"""Entry points' dev stack: process supervision of the embedded stack and the `make demo` flow.
The library never imports this package; only `reco.cli` does."""
