"""The base layer: user errors, configs, the run directory and its files, atomic writes, CPU facts."""
