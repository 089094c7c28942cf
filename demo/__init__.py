"""The demo: ``python demo/demo.py --help``."""
