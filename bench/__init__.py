"""fastrelay's measuring instruments: micro-benchmarks and the end-to-end runner."""
