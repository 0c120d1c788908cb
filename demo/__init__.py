"""The README's demo: `./demo.sh` runs `python -m demo.run_demo` (see run_demo's docstring)."""
